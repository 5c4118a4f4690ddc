"""Generate every bundle's model-zoo files from its spec (``bundles/<name>/bundle.yaml``) and the shared templates.

Usage:
    python scripts/generate_bundles.py            # (re)write the generated files of every bundle
    python scripts/generate_bundles.py --check    # exit 1 and list the files that differ from a fresh generation
    python scripts/generate_bundles.py --output-dir DIR [NAME ...]   # write into DIR/bundles/<name>/ instead

A spec names its pieces (``templates/families/*.yaml``, ``templates/datasets/*.yaml``, ...) and holds only what is
specific to the bundle. Each piece has sections ``shared`` (merged into train.yaml and inference.yaml), ``train``,
``evaluate``, ``inference``, ``multi_gpu``, ``metadata`` and ``docs``; the generator deep-merges
``templates/base.yaml``, the pieces in order and the spec's own sections (later wins; mappings merge key by key,
anything else, and a component with another ``_target_``, is replaced). A key written ``+name`` is MONAI's merge
marker (``monai.bundle.utils.MERGE_KEY``): its list is appended to ``name``'s, its mapping updates ``name``'s. When
nothing in the file being generated holds ``name`` yet, a top-level ``+name`` of ``evaluate.yaml`` or
``multi_gpu_train.yaml`` is written as it is, so that MONAI merges it into ``train.yaml`` at run time. A key written
``~name`` (any value) removes ``name``: a pairing drops a setting of its parent that nothing reads any more.

The ``#`` comments of the templates and specs travel with the keys they describe (the comment lines right above a
key and the comment at the end of its line; a later piece's comment on a key replaces an earlier one), and the
keys of each config file are written in the model zoo's reading order, one rule for every file: imports; paths
and device; the settings a user changes (plain values) under ``# --- settings you may change ---``; values read
from the datalist or the trained weights; network; loss; optimiser and LR schedule; transforms; dataset and
dataloader; inferer; postprocessing; handlers; ``train``; ``validate``; ``initialize``; ``run``; ``finalize``
(inside ``train``/``validate``: preprocessing, dataset, dataloader, inferer, postprocessing, metrics, handlers,
engine). Every other key (a component such as ``resampling``, an expression such as ``on_other_rank``, plumbing
such as ``label_keys``) is written right above the first key that reads it. Every written config is read back with
PyYAML (what MONAI reads) and must give the merged values.

A spec with ``extends: <bundle>`` (a dataset/loss pairing of another bundle) is merged on top of that bundle's
spec, resolved first (chains allowed; a cycle or an unknown bundle is an error naming the spec): its sections come
after the parent's, and ``table``, ``data_license`` and ``pieces`` merge by the same rules, so the parent's
``pieces`` are inherited unless the child sets ``pieces`` (replaces the list) or ``+pieces`` (appends to it).

It writes ``configs/{train,evaluate,inference,multi_gpu_train}.yaml``, ``configs/metadata.json``,
``configs/logging.conf``, ``docs/README.md``, ``docs/data_license.txt`` and ``LICENSE``, and the README's bundle
table between ``<!-- bundles:start -->`` and ``<!-- bundles:end -->``. The generated files carry no generator
header (they travel into exported bundles); ``--check`` in the tests keeps them in step with their sources.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import io
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelYAMLError
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "templates"
BUNDLES = REPO / "bundles"
LOCK_FILE = REPO / "requirements" / "lock.txt"
LOCKED = "locked"  # a metadata version that the generator takes from LOCK_FILE
README = REPO / "README.md"
SPEC_NAME = "bundle.yaml"
TABLE_START, TABLE_END = "<!-- bundles:start -->", "<!-- bundles:end -->"
SECTIONS = ("shared", "train", "evaluate", "inference", "multi_gpu", "metadata", "docs")
LINE_WIDTH = 120
MERGE_KEY, ID_SEP_KEY, DELETE_KEY = "+", "::", "~"  # monai.bundle.utils' (not imported: importing monai takes seconds)
INDENT = 2  # mapping indent; sequence dashes are indented by the same amount under their key
CONFIG_FILES = {  # generated file -> (sections merged into it, whether MONAI merges it onto train.yaml, usage lines)
    "configs/train.yaml": (
        ("shared", "train"),
        False,
        (
            "python -m monai.bundle run --config_file configs/train.yaml --logging_file configs/logging.conf",
            "    --dataset_dir DATA",
        ),
    ),
    "configs/evaluate.yaml": (
        ("evaluate",),
        True,
        (
            "python -m monai.bundle run --config_file \"['configs/train.yaml','configs/evaluate.yaml']\"",
            "    --logging_file configs/logging.conf --dataset_dir DATA",
        ),
    ),
    "configs/inference.yaml": (
        ("shared", "inference"),
        False,
        (
            "python -m monai.bundle run --config_file configs/inference.yaml --logging_file configs/logging.conf",
            "    --dataset_dir IN --output_dir OUT",
        ),
    ),
    "configs/multi_gpu_train.yaml": (
        ("multi_gpu",),
        True,
        (
            "torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run",
            "    --config_file \"['configs/train.yaml','configs/multi_gpu_train.yaml']\"",
            "    --logging_file configs/logging.conf --dataset_dir DATA",
        ),
    ),
}
TABLE_COLUMNS = ("paper", "dataset", "loss", "network", "paper_result")
# top-level keys of the model zoo's metadata schema (meta_schema_20240725.json), plus the zoo's display name
METADATA_KEYS = {
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "supported_apps", "name", "task", "description", "authors", "copyright", "data_source", "data_type",
    "image_classes", "label_classes", "pred_classes", "eval_metrics", "intended_use", "references",
    "network_data_format",
}  # fmt: skip
SPEC_KEYS = {*SECTIONS, "extends", "pieces", f"{MERGE_KEY}pieces", "data_license", "table"}  # a spec's top level

# The model zoo's reading order of a config file's top-level keys (spleen_ct_segmentation's train.json: imports,
# paths, settings, network, loss, optimiser, transforms, dataset and dataloader, inferer, postprocessing, handlers,
# engines, run). The settings a user changes (SETTING_RANK) come right after the paths, under SETTINGS_HEADING; any
# other key not listed here (a component, an expression, a PLUMBING value) is written right above the first key that
# reads it, next to the component that uses it (see :func:`top_level_keys`).
TOP_LEVEL_ORDER = {
    "imports": 0,
    "bundle_root": 1,
    "ckpt_dir": 2,
    "ckpt_path": 3,
    "pretrained_ckpt": 3,
    "resume_checkpoint": 3,
    "dataset_dir": 4,
    "datalist": 5,
    "output_dir": 6,
    "evaluation_dir": 6,
    "device": 7,
    "trained_settings": 15,
    "network_def": 20,
    "network": 21,
    "network_settings": 22,
    "loss": 30,
    "optimizer": 40,
    "lr_scheduler": 45,
    "load_image": 47,
    "volume_from_slice": 48,
    "base_transforms": 49,
    "image_transforms": 49,
    "shape_transforms": 50,
    "preprocessing": 51,
    "dataset": 52,
    "dataloader": 53,
    "inferer": 54,
    "inversion": 55,
    "postprocessing": 56,
    "handlers": 57,
    "evaluator": 63,
    "train": 70,
    "validate": 75,
    "keep_earlier_results": 80,
    "initialize": 90,
    "run": 95,
    "finalize": 99,
}
SETTING_RANK, DERIVED_RANK, COMPONENT_RANK = 10, 16, 50
# values read from the datalist or the trained weights: the data set's and the trained network's settings, written
# after the settings (DERIVED_RANK), as are the values that nothing in their file reads (evaluate.yaml's for train.yaml)
READ_SETTINGS = re.compile(r"\bread_datalist_field\(|@trained_settings\b")
SETTINGS_HEADING = "--- settings you may change ---"
# plain values that wire components together rather than set anything a user would change
PLUMBING = frozenset(
    {"label_keys", "spatial_keys", "spatial_modes", "target_key", "network_spatial_dims", "default_num_classes"}
)
# the same inside ``train`` and ``validate``; keys not listed are pieces of the preprocessing, or of the handlers
# when their names say so
PREPROCESSING_RANK, HANDLER_RANK = 10, 80
ENGINE_ORDER = {
    "preprocessing": 20,
    "dataset": 30,
    "sampler": 35,
    "dataloader": 40,
    "inferer": 50,
    "postprocessing": 60,
    "key_metric": 70,
    "additional_metrics": 71,
    "metrics_csv": 72,
    "handlers": 85,
    "checkpointing": 88,
    "trainer": 90,
    "evaluator": 90,
}
ENGINE_SECTIONS = ("train", "validate")


class SpecError(ValueError):
    """A spec or template is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Note:
    """The ``#`` comments of one key or list item: whole lines right above it and the one ending its line."""

    above: tuple[str, ...] = ()
    inline: str | None = None

    def __bool__(self) -> bool:
        return bool(self.above or self.inline)


class NotedMapping(dict):
    """A YAML mapping with the notes of its keys and its flow style (``{a: 1}``) as read."""

    def __init__(self, *args: Any, flow: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notes: dict[Any, Note] = {}
        self.flow = flow


class NotedList(list):
    """A YAML list with the notes of its items (by index) and its flow style (``[1, 2]``) as read."""

    def __init__(self, *args: Any, flow: bool = False) -> None:
        super().__init__(*args)
        self.notes: dict[int, Note] = {}
        self.flow = flow

    def joined(self, other: NotedList) -> NotedList:
        """This list followed by ``other``, notes included."""
        result = NotedList([*self, *copy.deepcopy(other)], flow=self.flow)
        result.notes = {**self.notes, **{index + len(self): note for index, note in other.notes.items()}}
        return result


def _inline_comment(line: str) -> str | None:
    """The text of a ``#`` comment that ends a YAML line (outside quotes, after white space), without the ``#``."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[index + 1 :].strip()
    return None


class _NoteReader:
    """Finds the notes of the keys and items of one YAML text, each comment line given to one node only."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.claimed: set[int] = set()

    def note(self, line: int) -> Note:
        above = []
        index = line - 1
        while index >= 0 and index not in self.claimed and self.lines[index].strip().startswith("#"):
            above.insert(0, self.lines[index].strip()[1:].strip())
            index -= 1
        self.claimed.update(range(index + 1, line))
        inline = None
        if line not in self.claimed and not self.lines[line].strip().startswith("#"):
            self.claimed.add(line)
            inline = _inline_comment(self.lines[line])
        return Note(tuple(above), inline)


def _scalar(value: Any) -> Any:
    """A plain Python value for a ruamel scalar; folded and literal strings keep their style and folds."""
    if isinstance(value, bool) or value is None or isinstance(value, FoldedScalarString | LiteralScalarString):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _with_notes(node: Any, reader: _NoteReader) -> Any:
    """The tree of ``node`` as :class:`NotedMapping`/:class:`NotedList` with notes, in document order."""
    if isinstance(node, CommentedMap):
        mapping = NotedMapping(flow=node.fa.flow_style() is True)
        for key, value in node.items():
            mapping.notes[key] = reader.note(node.lc.key(key)[0])
            mapping[key] = _with_notes(value, reader)
        return mapping
    if isinstance(node, CommentedSeq):
        sequence = NotedList(flow=node.fa.flow_style() is True)
        for index, value in enumerate(node):
            sequence.notes[index] = reader.note(node.lc.item(index)[0])
            sequence.append(_with_notes(value, reader))
        return sequence
    return _scalar(node)


def read_yaml(path: Path) -> NotedMapping:
    """Read a YAML mapping with its comments, with errors that name the file (duplicate keys are errors)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise SpecError(f"{path}: not found") from error
    return copy.deepcopy(_parse(str(path), text))


@functools.lru_cache(maxsize=256)
def _parse(path: str, text: str) -> NotedMapping:
    """The tree of one file's text (cached: every bundle reads base.yaml and its pieces again)."""
    try:
        content = YAML(typ="rt").load(text)
    except RuamelYAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: invalid YAML{where}: {getattr(error, 'problem', None) or error}") from error
    if not isinstance(content, CommentedMap):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return _with_notes(content, _NoteReader(text))


def _new_component(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` is another MONAI component (another ``_target_``), which replaces ``old`` instead of merging."""
    return "_target_" in new and new.get("_target_") != old.get("_target_")


def _as_mapping(value: Any) -> Any:
    """``value`` with every plain dict/list turned into :class:`NotedMapping`/:class:`NotedList` (no notes)."""
    if isinstance(value, dict) and not isinstance(value, NotedMapping):
        return NotedMapping({key: _as_mapping(item) for key, item in value.items()})
    if isinstance(value, list) and not isinstance(value, NotedList):
        return NotedList([_as_mapping(item) for item in value])
    return value


def _same_kind(old: Any, new: Any) -> bool:
    """Whether two values are of one kind: the same type, and both ``$`` expressions or neither."""
    if isinstance(old, str) and isinstance(new, str):
        return old.startswith("$") == new.startswith("$")
    return type(_plain(old)) is type(_plain(new))


def deep_merge(base: dict[str, Any], update: dict[str, Any], source: str) -> NotedMapping:
    """Merge ``update`` into a copy of ``base``: mappings key by key, the rest replaced, MONAI's ``+key`` merged.

    ``+name`` appends its list to ``name``'s list or updates ``name``'s mapping with its keys (as
    ``monai.bundle.utils.merge_kv``); when ``base`` has neither ``name`` nor ``+name``, ``+name`` is kept as it is.
    ``~name`` removes ``name`` (a key nothing reads once the update is merged).
    A mapping with another ``_target_`` than the one it meets is a different component and replaces it whole.
    A key keeps its note unless ``update`` gives one, or replaces its value by one of another kind (a number by a
    ``$`` expression, a list by a mapping, ...), which takes ``update``'s note, if any.

    Raises:
        SpecError: ``+name`` meets a value of another kind, or is not a list or mapping (names ``source``).
    """
    merged = copy.deepcopy(_as_mapping(base))
    update = _as_mapping(update)
    for key, value in update.items():
        if isinstance(key, str) and key.startswith(DELETE_KEY):  # ~name: drop name
            merged.pop(key[len(DELETE_KEY) :], None)
            continue
        note = update.notes.get(key, Note())
        name = key[len(MERGE_KEY) :] if isinstance(key, str) and key.startswith(MERGE_KEY) else None
        target = next((candidate for candidate in (name, key) if name and candidate in merged), None)
        if isinstance(key, str) and key.endswith("+"):
            raise SpecError(f"{source}: '{key}' is the old merge syntax; write '{MERGE_KEY}{key[:-1]}' (MONAI's)")
        if name and not isinstance(value, list | dict):
            raise SpecError(f"{source}: '{key}' must hold a list (appended) or a mapping (merged)")
        if target is not None:
            existing = merged[target]
            if isinstance(value, list) and isinstance(existing, list):
                merged[target] = existing.joined(value)
            elif isinstance(value, dict) and isinstance(existing, dict):
                for item_key, item in value.items():
                    existing[item_key] = copy.deepcopy(item)
                    if value.notes.get(item_key):
                        existing.notes[item_key] = value.notes[item_key]
            else:
                held = {dict: "a mapping", list: "a list"}.get(type(_plain(existing)), "a value")
                raise SpecError(
                    f"{source}: '{key}' must append a list to a list or merge a mapping into a mapping, "
                    f"but '{target}' holds {held}"
                )
            key = target
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and not _new_component(merged[key], value):
            merged[key] = deep_merge(merged[key], value, source)
        else:
            if key in merged and not _same_kind(merged[key], value):
                merged.notes[key] = note  # a comment on a value of another kind may not hold for the new one
            merged[key] = copy.deepcopy(value)
        if note:
            merged.notes[key] = note
    return merged


def spec_chain(spec_path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, NotedMapping]]:
    """The spec and the specs it extends, each read once, the root first.

    ``extends: NAME`` names a sibling bundle folder (``<bundles>/NAME/bundle.yaml``).

    Raises:
        SpecError: unknown top-level keys, an ``extends`` that is not a bundle name, names no existing spec or
            closes a cycle (names the spec file).
    """
    spec = read_yaml(spec_path)
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SpecError(f"{spec_path}: unknown top-level keys {sorted(unknown)}; use {sorted(SPEC_KEYS)}")
    if "extends" not in spec:
        return [(spec_path, spec)]
    parent = spec["extends"]
    if not isinstance(parent, str) or not parent or "/" in parent:
        raise SpecError(f"{spec_path}: 'extends' must name another bundle (a folder under bundles/), got {parent!r}")
    parent_path = spec_path.parent.parent / parent / SPEC_NAME
    if parent_path in (*seen, spec_path):
        cycle = " -> ".join(path.parent.name for path in (*seen, spec_path, parent_path))
        raise SpecError(f"{spec_path}: 'extends' makes a cycle ({cycle})")
    if not parent_path.is_file():
        raise SpecError(f"{spec_path}: extends unknown bundle {parent!r} ({parent_path} not found)")
    return [*spec_chain(parent_path, (*seen, spec_path)), (spec_path, spec)]


def compose(spec_path: Path) -> tuple[dict[str, NotedMapping], NotedMapping, list[str]]:
    """Merge base, pieces, the specs it extends (root first) and the spec into one mapping per section.

    Returns:
        The sections, the resolved spec (``pieces``, ``data_license`` and ``table`` merged along the ``extends``
        chain) and the repository-relative sources in merge order.
    """
    chain = spec_chain(spec_path)
    spec = NotedMapping()
    for path, own in chain:
        own_keys = NotedMapping({key: value for key, value in own.items() if key not in SECTIONS})
        spec = deep_merge(spec, own_keys, str(path))
    if f"{MERGE_KEY}pieces" in spec:
        raise SpecError(f"{spec_path}: '{MERGE_KEY}pieces' appends to the pieces of an extended spec; it has none")
    pieces = spec.get("pieces", [])
    if not isinstance(pieces, list) or not all(isinstance(piece, str) for piece in pieces):
        raise SpecError(f"{spec_path}: 'pieces' must be a list of files under templates/")
    specs = dict(chain)
    sources = [TEMPLATES / "base.yaml", *(TEMPLATES / piece for piece in pieces), *specs]
    sections = {name: NotedMapping() for name in SECTIONS}
    for source in sources:
        piece = specs[source] if source in specs else read_yaml(source)
        for name in SECTIONS:
            if name in piece:
                if not isinstance(piece[name], dict):
                    raise SpecError(f"{source}: section '{name}' must be a mapping")
                sections[name] = deep_merge(sections[name], piece[name], str(source))
        stray = set() if source in specs else set(piece) - set(SECTIONS)  # specs were checked by spec_chain
        if stray:
            raise SpecError(f"{source}: unknown sections {sorted(stray)}; use {list(SECTIONS)}")
    return sections, spec, [source.relative_to(REPO).as_posix() for source in sources]


def _is_component(value: Any) -> bool:
    if isinstance(value, dict):
        return "_target_" in value
    return isinstance(value, list) and bool(value) and all(_is_component(item) or _is_reference(item) for item in value)


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("@")


def _root(key: Any) -> str:
    """The first level of a key (``train`` for ``train#dataloader#sampler`` or ``+train#handlers``)."""
    return re.split(rf"#|{ID_SEP_KEY}", str(key).removeprefix(MERGE_KEY), maxsplit=1)[0]


REFERENCE = re.compile(r"[@%]([^\W\d]\w*)")  # the first level of an ``@id`` reference or ``%id`` macro


def _holds_code(value: Any) -> bool:
    """Whether ``value`` is or holds a component, a ``$`` expression, an ``@`` reference or a ``%`` macro."""
    if isinstance(value, dict):
        return "_target_" in value or any(_holds_code(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_code(item) for item in value)
    return isinstance(value, str) and value.startswith(("$", "@", "%"))


def is_setting(key: Any, value: Any) -> bool:
    """Whether a top-level key is a setting a user changes: a plain value (no code, not empty) that is no plumbing."""
    root = _root(key)
    return root not in TOP_LEVEL_ORDER and root not in PLUMBING and value not in (None, []) and not _holds_code(value)


def top_level_rank(key: Any, value: Any) -> int | None:
    """Position class of a top-level key in the zoo's reading order (:data:`TOP_LEVEL_ORDER`); None: by its readers."""
    root = _root(key)
    if root in TOP_LEVEL_ORDER:
        return TOP_LEVEL_ORDER[root]
    if isinstance(value, str) and value.startswith("$") and READ_SETTINGS.search(value):
        return DERIVED_RANK
    return SETTING_RANK if is_setting(key, value) else None


def _read_roots(value: Any) -> set[str]:
    """The top-level keys that ``value`` reads (``@key``, ``@key#item``, ``$...@key...``, ``%key``)."""
    if isinstance(value, dict):
        return set().union(*(_read_roots(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_read_roots(item) for item in value))
    return set(REFERENCE.findall(value)) if isinstance(value, str) else set()


def top_level_keys(config: dict[str, Any]) -> list[Any]:
    """The top-level keys of ``config`` in the zoo's reading order, each plumbing key next to its first reader.

    Keys of :data:`TOP_LEVEL_ORDER` and the settings (:func:`is_setting`) are sorted by rank, insertion order within
    a rank. Every other key is written right above the first of them (in that order) that reads it, after the keys
    it reads that are placed the same way (so a chain of plumbing keys ends at its component); a key that nothing
    in the file reads (e.g. one that ``evaluate.yaml`` sets for train.yaml's components) goes after the settings, or
    among the data pipeline pieces if it is a component.
    """
    ranks = {key: top_level_rank(key, value) for key, value in config.items()}
    order = sorted((key for key in config if ranks[key] is not None), key=lambda key: ranks[key])
    roots = {key: _root(key) for key in config}
    reads = {key: _read_roots(value) for key, value in config.items()}
    readers = {key: [reader for reader in config if reader != key and roots[key] in reads[reader]] for key in config}
    pending = [key for key in config if ranks[key] is None]
    while pending:
        ready = [key for key in pending if not any(reader in pending for reader in readers[key])] or pending[:1]
        for key in ready:
            placed = [order.index(reader) for reader in readers[key] if reader in order]
            if placed:
                ranks[key] = ranks[order[min(placed)]]  # where its reader is
            else:
                ranks[key] = COMPONENT_RANK if _is_component(config[key]) else DERIVED_RANK
                placed = [next((index for index, other in enumerate(order) if ranks[other] > ranks[key]), len(order))]
            order.insert(min(placed), key)
            pending.remove(key)
    return order


def engine_rank(key: Any, value: Any) -> int:
    """Position class of a key inside ``train`` or ``validate`` (see :data:`ENGINE_ORDER`)."""
    if key in ENGINE_ORDER:
        return ENGINE_ORDER[key]
    return HANDLER_RANK if re.search(r"handlers?$|saver$|_table$", str(key)) else PREPROCESSING_RANK


def _ordered(mapping: NotedMapping, rank: Callable[[Any, Any], int]) -> list[Any]:
    """The keys of ``mapping`` by rank, insertion order within a rank."""
    return sorted(mapping, key=lambda key: rank(key, mapping[key]))


def _pyyaml_float(value: float) -> str:
    """A float as PyYAML writes it (YAML 1.1 needs a dot: ``3.0e-05``, not ``3e-05``)."""
    return yaml.safe_dump(value).removesuffix("\n...\n").strip()


def _folded(text: str, indent: int) -> str:
    """``text`` as a folded block scalar (``>-``) broken at spaces to fit the line width, if it is too long."""
    if isinstance(text, FoldedScalarString | LiteralScalarString) or indent + len(text) <= LINE_WIDTH:
        return text
    if "\n" in text or "  " in text or text != text.strip():
        return text  # folding would change it
    folds, start = [], 0
    while len(text) - start > LINE_WIDTH - indent:
        cut = text.rfind(" ", start, start + LINE_WIDTH - indent)
        if cut <= start:
            break
        folds.append(cut)
        start = cut + 1
    folded = FoldedScalarString(text)
    folded.fold_pos = folds
    return folded


def _fit_flow_style(converted: Any, value: Any, start: int) -> None:
    """Write a flow mapping or list (``{a: 1}``) in block style when its line, starting at ``start``, is too long."""
    if isinstance(converted, CommentedMap | CommentedSeq) and converted.fa.flow_style():
        flow = yaml.safe_dump(_plain(value), default_flow_style=True, width=float("inf")).strip()
        if start + len(flow) > LINE_WIDTH:
            converted.fa.set_block_style()


def _set_note(container: CommentedMap | CommentedSeq, key: Any, note: Note, column: int) -> None:
    if note.above:
        container.yaml_set_comment_before_after_key(key, before="\n".join(note.above), indent=column)
    if note.inline:
        container.yaml_add_eol_comment(f"# {note.inline}", key)


def engine_keys(mapping: dict[str, Any]) -> list[Any]:
    """The keys of ``train`` or ``validate`` in the zoo's reading order (:func:`engine_rank`)."""
    return _ordered(mapping, engine_rank)


def to_commented(value: Any, column: int = 0, order: Callable[[dict[str, Any]], list[Any]] | None = None) -> Any:
    """A ruamel tree of ``value`` with its notes, keys ordered by ``order`` (insertion order when None).

    Args:
        value: a merged config value.
        column: the column of this value's keys or list dashes.
        order: the keys of this mapping in the order to write them; with :func:`top_level_keys`, ``train`` and
            ``validate`` below it are ordered by :func:`engine_keys`.
    """
    if isinstance(value, dict):
        value = _as_mapping(value)
        result = CommentedMap()
        keys = order(value) if order else list(value)
        for key in keys:
            engine = order is top_level_keys and key in ENGINE_SECTIONS
            result[key] = to_commented(value[key], column + INDENT, engine_keys if engine else None)
            note = value.notes.get(key, Note())
            _fit_flow_style(result[key], value[key], column + len(str(key)) + 2)
            if isinstance(result[key], str):
                start = column + len(str(key)) + 2
                result[key] = _folded(result[key], start)
                if note.inline and start + len(result[key]) + len(note.inline) + 4 > LINE_WIDTH:
                    note = Note((*note.above, note.inline))  # a comment that does not fit goes above the key
            _set_note(result, key, note, column)
        if value.flow:
            result.fa.set_flow_style()
        return result
    if isinstance(value, list):
        value = _as_mapping(value)
        result = CommentedSeq()
        for index, item in enumerate(value):
            converted = to_commented(item, column + INDENT)
            _fit_flow_style(converted, item, column + INDENT)
            result.append(_folded(converted, column + INDENT) if isinstance(converted, str) else converted)
            note = value.notes.get(index, Note())
            if isinstance(converted, CommentedMap) and converted and not converted.fa.flow_style() and note.inline:
                first = next(iter(converted))  # a comment ending "- key: value" describes the item
                converted.yaml_add_eol_comment(f"# {note.inline}", first)
                note = Note(note.above)
            _set_note(result, index, note, column)
        if value.flow:
            result.fa.set_flow_style()
        return result
    return value


def _yaml_writer() -> YAML:
    writer = YAML(typ="rt")
    writer.width = 4096  # long scalars are folded by _folded, never by the emitter
    writer.indent(mapping=INDENT, sequence=2 * INDENT, offset=INDENT)
    writer.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    writer.representer.add_representer(
        float,
        lambda representer, value: representer.represent_scalar("tag:yaml.org,2002:float", _pyyaml_float(value)),
    )
    return writer


def _plain(value: Any) -> Any:
    """``value`` as plain dicts, lists and built-in scalars (what PyYAML gives back)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, str) else value


def _inline_notes(value: Any) -> set[str]:
    """The end-of-line comments of a config tree."""
    notes = set()
    if isinstance(value, NotedMapping | NotedList):
        notes.update(note.inline for note in value.notes.values() if note.inline)
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
        notes |= _inline_notes(item)
    return notes


def _two_spaces_before_comments(text: str, comments: set[str]) -> str:
    """``text`` with two spaces before each of the end-of-line ``comments`` (ruamel sometimes writes one)."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        for comment in comments:
            ending = f" # {comment}"
            if line.endswith(ending) and not line.endswith(f" {ending}") and len(line) > len(ending):
                lines[index] = f"{line[: -len(ending)]}  # {comment}"
                break
    return "\n".join(lines)


def with_settings_heading(content: NotedMapping) -> NotedMapping:
    """``content`` with :data:`SETTINGS_HEADING` above its first setting and a blank line before and after them."""
    keys = top_level_keys(content)
    settings = [index for index, key in enumerate(keys) if top_level_rank(key, content[key]) == SETTING_RANK]
    if not settings:
        return content
    result = copy.copy(content)
    result.notes = dict(content.notes)
    first = keys[settings[0]]
    note = result.notes.get(first, Note())
    result.notes[first] = Note(("", SETTINGS_HEADING, *note.above), note.inline)  # "": a blank line
    if settings[-1] + 1 < len(keys):
        after = keys[settings[-1] + 1]
        note = result.notes.get(after, Note())
        result.notes[after] = Note(("", *note.above), note.inline)
    return result


def dump_yaml(
    content: NotedMapping, header: str = "", order: Callable[[dict[str, Any]], list[Any]] | None = top_level_keys
) -> str:
    """YAML text of a config: keys in the zoo's reading order, settings first, notes as comments, read back checked.

    Raises:
        SpecError: PyYAML (what MONAI reads configs with) reads the text back as other values.
    """
    if order is top_level_keys:
        content = with_settings_heading(_as_mapping(content))
    tree = to_commented(content, order=order)
    if header:
        tree.yaml_set_start_comment(header)
    stream = io.StringIO()
    _yaml_writer().dump(tree, stream)
    text = _two_spaces_before_comments(stream.getvalue(), _inline_notes(content))
    read_back, expected = yaml.safe_load(text), _plain(content)
    if read_back != expected:
        differing = sorted(key for key in {*read_back, *expected} if read_back.get(key) != expected.get(key))
        raise SpecError(f"the YAML written for {differing} does not read back (with PyYAML) as the merged values")
    return text


def render_config(sections: dict[str, NotedMapping], parts: tuple[str, ...], merged_at_run_time: bool) -> NotedMapping:
    """Merge the given sections (e.g. ``shared`` then ``train``) into one config mapping.

    Raises:
        SpecError: a ``+key`` is left that nothing merges: below the top level, or in a file read on its own.
    """
    config = NotedMapping()
    for part in parts:
        config = deep_merge(config, sections[part], part)
    _check_merge_keys(config, "+".join(parts), top_level_allowed=merged_at_run_time)
    return config


TRAINED_SETTINGS = "trained_settings"  # evaluate.yaml's reader of the settings stored with models/model.pt


def with_trained_settings(evaluate: NotedMapping, train: NotedMapping) -> NotedMapping:
    """``evaluate`` reading from ``models/model.pt`` every network setting that train.yaml sets to a value of its own.

    For each ``network_settings`` entry ``'@key'`` whose ``key`` train.yaml gives as a value (not an expression or
    a reference: those read the data set, e.g. the datalist's classes, which the weights must then agree with)
    and that ``evaluate`` does not set itself, ``evaluate`` gets ``key: $@trained_settings['key']`` and train.yaml's
    value as the default of its ``trained_settings`` (used only while there is no weights file), so that an
    evaluation takes the trained network's filters, patch size and grid without retyping them, as inference does.
    Nothing changes when ``evaluate`` holds no ``trained_settings`` component.
    """
    reader = evaluate.get(TRAINED_SETTINGS)
    if not isinstance(reader, dict):
        return evaluate
    keys: list[str] = []
    for reference in dict(train.get("network_settings") or {}).values():
        if not (isinstance(reference, str) and reference.startswith("@") and reference[1:] in train):
            continue
        key, value = reference[1:], train[reference[1:]]
        if (isinstance(value, str) and value.startswith(("$", "@", "%"))) or key in evaluate or key in keys:
            continue
        keys.append(key)
    result = copy.deepcopy(evaluate)
    defaults = NotedMapping({**dict(reader.get("defaults") or {}), **{key: copy.deepcopy(train[key]) for key in keys}})
    result[TRAINED_SETTINGS]["defaults"] = defaults
    for key in keys:
        result[key] = f"$@{TRAINED_SETTINGS}['{key}']"
        result.notes[key] = Note(inline="the trained network's (models/model.pt)")
    return result


def _check_merge_keys(value: Any, where: str, top_level_allowed: bool) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.startswith(MERGE_KEY) and not top_level_allowed:
                raise SpecError(f"section {where}: '{key}' has nothing to merge into ('{key[1:]}' is not defined)")
            _check_merge_keys(item, where, top_level_allowed=False)
    elif isinstance(value, list):
        for item in value:
            _check_merge_keys(item, where, top_level_allowed=False)


def render_docs(name: str, sections: dict[str, NotedMapping]) -> str:
    """Fill ``templates/README.md.in`` with the merged ``docs`` section and the metadata's references.

    The optional docs field ``protocol`` (a Markdown table) becomes a ``## Protocol`` section.
    """
    fields = {key: str(value).strip() for key, value in sections["docs"].items()}
    fields["bundle"] = name
    fields["version"] = str(sections["metadata"].get("version", ""))
    fields["references"] = "\n".join(f"- {reference}" for reference in sections["metadata"].get("references", []))
    protocol = fields.pop("protocol", "")
    fields["protocol_section"] = f"## Protocol\n\n{protocol}\n\n" if protocol else ""
    template = (TEMPLATES / "README.md.in").read_text(encoding="utf-8")
    try:
        return template.format(**fields)
    except KeyError as error:
        raise SpecError(f"bundle {name}: docs field {error} missing (set it in a piece or the spec's docs)") from error


@functools.cache
def locked_versions() -> dict[str, str]:
    """``{canonical package name: version}`` of every ``name==version`` line of ``requirements/lock.txt``.

    Read once per run: every bundle's metadata takes its versions from it.
    """
    pins = {}
    for line in LOCK_FILE.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line):
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def canonicalize_name(name: str) -> str:
    """A package's name as the package index compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def with_locked_versions(metadata: dict[str, Any], spec_path: Path) -> dict[str, Any]:
    """The metadata with every version written ``locked`` replaced by the version pinned in the lock."""
    pins = locked_versions()
    packages = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}
    wanted = [(metadata, field, package) for field, package in packages.items() if metadata.get(field) == LOCKED]
    required = metadata.get("required_packages_version", {})
    wanted += [(required, package, package) for package, version in required.items() if version == LOCKED]
    for mapping, key, package in wanted:
        if canonicalize_name(package) not in pins:
            raise SpecError(f"{spec_path}: {package} is not in {LOCK_FILE.name} (run scripts/update_lock.sh)")
        mapping[key] = pins[canonicalize_name(package)]
    return metadata


def bundle_files(spec_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """All generated files of one bundle (relative path -> text) and its README table row."""
    name = spec_path.parent.name
    sections, spec, _ = compose(spec_path)
    files: dict[str, str] = {}
    for relative, (parts, merged_at_run_time, usage) in CONFIG_FILES.items():
        try:
            config = render_config(sections, parts, merged_at_run_time)
            if relative == "configs/evaluate.yaml":
                config = with_trained_settings(config, render_config(sections, ("shared", "train"), False))
            files[relative] = dump_yaml(config, header=" \\\n".join(usage))
        except SpecError as error:
            raise SpecError(f"{spec_path}: {relative}: {error}") from error
    unknown = sorted(set(sections["metadata"]) - METADATA_KEYS)
    if unknown:
        raise SpecError(f"{spec_path}: metadata keys {unknown} are not in the model zoo's metadata schema")
    metadata = with_locked_versions(_plain(sections["metadata"]), spec_path)
    files["configs/metadata.json"] = json.dumps(metadata, indent=4) + "\n"
    files["configs/logging.conf"] = (TEMPLATES / "logging.conf").read_text(encoding="utf-8")
    files["docs/README.md"] = render_docs(name, sections)
    if "data_license" not in spec:
        raise SpecError(f"{spec_path}: 'data_license' (a file under templates/data_licenses/) is required")
    license_path = TEMPLATES / "data_licenses" / spec["data_license"]
    if not license_path.is_file():
        raise SpecError(f"{spec_path}: data licence {license_path} not found")
    files["docs/data_license.txt"] = license_path.read_text(encoding="utf-8")
    files["LICENSE"] = (TEMPLATES / "LICENSE").read_text(encoding="utf-8")
    table = spec.get("table", {})
    missing = [column for column in TABLE_COLUMNS if column not in table]
    if missing:
        raise SpecError(f"{spec_path}: 'table' lacks {missing}")
    cell = f"`{name}` (extends `{spec['extends']}`)" if "extends" in spec else f"`{name}`"
    row = {"bundle": cell, **{column: str(table[column]).strip() for column in TABLE_COLUMNS}}
    return files, row


def find_specs(names: list[str] | None = None) -> list[Path]:
    """Spec files of the named bundles (all bundles when ``names`` is empty), sorted by name."""
    specs = sorted(BUNDLES.glob(f"*/{SPEC_NAME}"))
    if names:
        by_name = {spec.parent.name: spec for spec in specs}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise SpecError(f"no {SPEC_NAME} for bundle(s) {unknown} under {BUNDLES}")
        specs = [by_name[name] for name in names]
    if not specs:
        raise SpecError(f"no bundles/*/{SPEC_NAME} found under {BUNDLES}")
    return specs


def readme_table(rows: list[dict[str, str]]) -> str:
    """Markdown table of the bundles for the README block."""
    titles = ("bundle", "paper", "dataset", "loss", "network", "paper's reported result")
    lines = [
        "Generated from `bundles/*/bundle.yaml` and `templates/` by `python scripts/generate_bundles.py` (`--check` in"
        " the tests). One bundle per dataset/loss pairing of the papers, each with its own weights and metadata; a"
        " bundle that extends another is a baseline pairing of the same paper and differs from it only by its loss,"
        " which its `configs/train.yaml` names (`loss:`).",
        "",
        "| " + " | ".join(titles) + " |",
        "|" + "---|" * len(titles),
    ]
    lines += ["| " + " | ".join(row[key] for key in ("bundle", *TABLE_COLUMNS)) + " |" for row in rows]
    return "\n".join(lines)


def readme_with_table(readme_text: str, table: str) -> str:
    """The README text with the block between the markers replaced by ``table``."""
    start, end = readme_text.find(TABLE_START), readme_text.find(TABLE_END)
    if start < 0 or end < start:
        raise SpecError(f"{README}: markers {TABLE_START} ... {TABLE_END} not found")
    return f"{readme_text[: start + len(TABLE_START)]}\n{table}\n{readme_text[end:]}"


def generate(names: list[str] | None = None) -> dict[str, str]:
    """Every generated file (repository-relative path -> text); README.md too when all bundles are generated."""
    outputs: dict[str, str] = {}
    rows = []
    for spec in find_specs(names):
        files, row = bundle_files(spec)
        rows.append(row)
        folder = spec.parent.relative_to(REPO).as_posix()
        outputs.update({f"{folder}/{relative}": text for relative, text in files.items()})
        outputs[f"{folder}/models/.gitkeep"] = ""
    if not names:
        outputs[README.name] = readme_with_table(README.read_text(encoding="utf-8"), readme_table(rows))
    return outputs


def write(outputs: dict[str, str], root: Path) -> None:
    """Write the files under ``root``, creating folders; each file is replaced atomically."""
    for relative, text in outputs.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)


def check(names: list[str] | None = None) -> list[str]:
    """Differences between the checked-in files and a fresh generation (unified diffs, empty when up to date)."""
    problems = []
    for relative, text in generate(names).items():
        path = REPO / relative
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        current = path.read_text(encoding="utf-8")
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(path), "generated", lineterm="", n=1
            )
            problems.append("\n".join(list(diff)[:40]))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="bundles to generate (default: all)")
    parser.add_argument("--check", action="store_true", help="compare with the checked-in files, write nothing")
    parser.add_argument("--output-dir", type=Path, help="write into this folder (as if it were the repository root)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check(args.names)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print(f"{len(problems)} generated file(s) out of date; run python scripts/generate_bundles.py")
                return 1
            print("generated bundle files are up to date")
            return 0
        outputs = generate(args.names)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write(outputs, args.output_dir or REPO)
    print(f"wrote {len(outputs)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
