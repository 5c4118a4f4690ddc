"""Generate every bundle's model-zoo files from its spec (``bundles/<name>/bundle.yaml``) and the shared templates.

Usage:
    python scripts/generate_bundles.py            # (re)write the generated files of every bundle
    python scripts/generate_bundles.py --check    # exit 1 and list the files that differ from a fresh generation
    python scripts/generate_bundles.py --output-dir DIR [NAME ...]   # write into DIR/bundles/<name>/ instead

A spec names its pieces (``templates/families/*.yaml``, ``templates/datasets/*.yaml``) and holds only what is
specific to the bundle. Each piece has sections ``shared`` (merged into train.yaml and inference.yaml),
``train``, ``evaluate``, ``inference``, ``multi_gpu``, ``metadata`` and ``docs``; the generator deep-merges
``templates/base.yaml``, the pieces in order and the spec's own sections (later wins; mappings merge key by key,
anything else, and a component with another ``_target_``, is replaced; a key written ``name+`` appends its
list to ``name``).

A spec with ``extends: <bundle>`` (a dataset/loss pairing of another bundle) is merged on top of that bundle's
spec, resolved first (chains allowed; a cycle or an unknown bundle is an error naming the spec): its sections come
after the parent's, and ``table``, ``data_license`` and ``pieces`` merge by the same rules, so the parent's
``pieces`` are inherited unless the child sets ``pieces`` (replaces the list) or ``pieces+`` (appends to it). The
parent specs are listed among the sources of the generated files, root first.

It then writes
``configs/{train,evaluate,inference,multi_gpu_train}.yaml``, ``configs/metadata.json``, ``configs/logging.conf``,
``docs/README.md``, ``docs/data_license.txt`` and ``LICENSE``, each saying where it came from, and the README's
bundle table between ``<!-- bundles:start -->`` and ``<!-- bundles:end -->``.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "templates"
BUNDLES = REPO / "bundles"
README = REPO / "README.md"
SPEC_NAME = "bundle.yaml"
TABLE_START, TABLE_END = "<!-- bundles:start -->", "<!-- bundles:end -->"
SECTIONS = ("shared", "train", "evaluate", "inference", "multi_gpu", "metadata", "docs")
CONFIG_FILES = {  # generated file -> (sections merged into it, usage comment)
    "configs/train.yaml": (
        ("shared", "train"),
        "python -m monai.bundle run --config_file configs/train.yaml --logging_file configs/logging.conf "
        "--dataset_dir DATA",
    ),
    "configs/evaluate.yaml": (
        ("evaluate",),
        "python -m monai.bundle run --config_file \"['configs/train.yaml','configs/evaluate.yaml']\" "
        "--logging_file configs/logging.conf --dataset_dir DATA",
    ),
    "configs/inference.yaml": (
        ("shared", "inference"),
        "python -m monai.bundle run --config_file configs/inference.yaml --logging_file configs/logging.conf "
        "--dataset_dir IN --output_dir OUT",
    ),
    "configs/multi_gpu_train.yaml": (
        ("multi_gpu",),
        "torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run --config_file "
        "\"['configs/train.yaml','configs/multi_gpu_train.yaml']\" --logging_file configs/logging.conf "
        "--dataset_dir DATA",
    ),
}
TABLE_COLUMNS = ("paper", "dataset", "loss", "network", "paper_result")
SPEC_KEYS = {*SECTIONS, "extends", "pieces", "pieces+", "data_license", "table"}  # allowed at a spec's top level


class SpecError(ValueError):
    """A spec or template is malformed; the message names the file and the problem."""


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        content = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise SpecError(f"{path}: not found") from error
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: invalid YAML ({error})") from error
    if not isinstance(content, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return content


def _new_component(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` is another MONAI component (another ``_target_``), which replaces ``old`` instead of merging."""
    return "_target_" in new and new.get("_target_") != old.get("_target_")


def deep_merge(base: dict[str, Any], update: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``: mappings key by key, ``key+`` lists appended, the rest replaced.

    A mapping with another ``_target_`` than the one it meets is a different component and replaces it whole.

    Raises:
        SpecError: ``key+`` is not a list or extends something that is not a list (names ``source``).
    """
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if key.endswith("+"):
            name = key[:-1]
            if not isinstance(value, list) or not isinstance(merged.get(name, []), list):
                raise SpecError(f"{source}: '{key}' must append a list to a list")
            merged[name] = [*merged.get(name, []), *copy.deepcopy(value)]
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and not _new_component(merged[key], value):
            merged[key] = deep_merge(merged[key], value, source)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def spec_chain(spec_path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The spec and the specs it extends, each read once, the root first.

    ``extends: NAME`` names a sibling bundle folder (``<bundles>/NAME/bundle.yaml``).

    Raises:
        SpecError: unknown top-level keys, an ``extends`` that is not a bundle name, names no existing spec or
            closes a cycle (names the spec file).
    """
    spec = read_yaml(spec_path)
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SpecError(f"{spec_path}: unknown top-level keys {sorted(unknown)}")
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


def compose(spec_path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
    """Merge base, pieces, the specs it extends (root first) and the spec into one mapping per section.

    Returns:
        The sections, the resolved spec (``pieces``, ``data_license`` and ``table`` merged along the ``extends``
        chain) and the repository-relative sources in merge order.
    """
    chain = spec_chain(spec_path)
    spec: dict[str, Any] = {}
    for path, own in chain:
        spec = deep_merge(spec, {key: value for key, value in own.items() if key not in SECTIONS}, str(path))
    specs = dict(chain)
    sources = [TEMPLATES / "base.yaml", *(TEMPLATES / piece for piece in spec.get("pieces", [])), *specs]
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
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


def header(sources: list[str], prefix: str = "# ") -> str:
    """The first line of every generated file."""
    return f"{prefix}generated by scripts/generate_bundles.py from {', '.join(sources)}; do not edit"


class _ConfigDumper(yaml.SafeDumper):
    """Block style, except lists of plain numbers or words, which read best in one line (``[1, 2, 2]``)."""


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    flat = all(
        isinstance(item, int | float | bool) or (isinstance(item, str) and item.isidentifier()) for item in items
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat and bool(items))


_ConfigDumper.add_representer(list, _represent_list)


def dump_yaml(content: dict[str, Any]) -> str:
    """YAML text of a config, in insertion order (``imports`` first), wide lines."""
    ordered = {key: content[key] for key in sorted(content, key=lambda key: key != "imports")}
    return yaml.dump(ordered, Dumper=_ConfigDumper, sort_keys=False, width=120, allow_unicode=True)


def render_config(sections: dict[str, dict[str, Any]], parts: tuple[str, ...]) -> dict[str, Any]:
    """Merge the given sections (e.g. ``shared`` then ``train``) into one config mapping."""
    config: dict[str, Any] = {}
    for part in parts:
        config = deep_merge(config, sections[part], part)
    return config


def render_docs(name: str, sections: dict[str, dict[str, Any]], sources: list[str]) -> str:
    """Fill ``templates/README.md.in`` with the merged ``docs`` section, the train ``method`` and the references."""
    method = sections["train"].get("method", "none: train.yaml names its `loss`")
    fields = {**sections["docs"], "bundle": name, "default_method": method}
    fields["references"] = "\n".join(f"- {reference}" for reference in sections["metadata"].get("references", []))
    template = (TEMPLATES / "README.md.in").read_text()
    try:
        body = template.format(**{key: str(value).strip() for key, value in fields.items()})
    except KeyError as error:
        raise SpecError(f"bundle {name}: docs field {error} missing (set it in a piece or the spec's docs)") from error
    return f"<!-- {header(sources, prefix='')} -->\n{body}"


def bundle_files(spec_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """All generated files of one bundle (relative path -> text) and its README table row."""
    name = spec_path.parent.name
    sections, spec, sources = compose(spec_path)
    files: dict[str, str] = {}
    for relative, (parts, usage) in CONFIG_FILES.items():
        comment = f"{header(sources)}\n# {usage}\n"
        files[relative] = comment + dump_yaml(render_config(sections, parts))
    metadata = {"generated_by": header(sources, prefix=""), **sections["metadata"]}
    files["configs/metadata.json"] = json.dumps(metadata, indent=4) + "\n"
    files["configs/logging.conf"] = f"{header(['templates/logging.conf'])}\n{(TEMPLATES / 'logging.conf').read_text()}"
    files["docs/README.md"] = render_docs(name, sections, sources)
    if "data_license" not in spec:
        raise SpecError(f"{spec_path}: 'data_license' (a file under templates/data_licenses/) is required")
    license_path = TEMPLATES / "data_licenses" / spec["data_license"]
    if not license_path.is_file():
        raise SpecError(f"{spec_path}: data licence {license_path} not found")
    files["docs/data_license.txt"] = (
        f"{header([license_path.relative_to(REPO).as_posix()])}\n{license_path.read_text()}"
    )
    files["LICENSE"] = f"{header(['templates/LICENSE'])}\n{(TEMPLATES / 'LICENSE').read_text()}"
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
        " bundle that extends another is a baseline pairing of the same paper and differs from it only by its loss."
        " `--method` switches any bundle to the paper's other losses.",
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
        outputs[README.name] = readme_with_table(README.read_text(), readme_table(rows))
    return outputs


def write(outputs: dict[str, str], root: Path) -> None:
    """Write the files under ``root``, creating folders."""
    for relative, text in outputs.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def check(names: list[str] | None = None) -> list[str]:
    """Differences between the checked-in files and a fresh generation (unified diffs, empty when up to date)."""
    problems = []
    for relative, text in generate(names).items():
        path = REPO / relative
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        current = path.read_text()
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
