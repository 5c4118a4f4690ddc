"""Export a bundle of this collection as a model-zoo submission that runs without this repository.

    python scripts/export_bundle.py acdc17_rrw dist/ --checkpoint runs/acdc/models/model.pt \
        --url https://example.org/weights/acdc17_rrw_v0.1.0_model.pt
    python scripts/export_bundle.py acdc17_rrw dist/ --inline-weights       # one zip for local sharing

writes ``dist/acdc17_rrw_v0.1.0.zip`` (``NAME_vVERSION.zip``, the version of the bundle's metadata), one
top-level folder named like the bundle, in the model-zoo layout:

- ``configs/*.json``: the bundle's configs as JSON (the format the zoo's tools and ``monai.bundle.load`` read);
  ``metadata.json`` holds the schema's keys only (plus the zoo's ``name``), the installed versions of MONAI,
  PyTorch, NumPy and of every public package the configs and vendored modules import;
- ``scripts/``: the modules of this project's ``common`` package the configs need (found by following imports;
  ``common.`` rewritten to ``scripts.``) and the data preparation scripts the README names, run as
  ``python -m scripts.prepare_NAME``;
- ``docs/README.md`` with the commands rewritten for the bundle's own files and how to install its requirements,
  ``docs/data_license.txt``, ``LICENSE``;
- ``models/model.pt``: the network weights with their network settings (``common.networks.weights``). By default the
  weights stay OUTSIDE the zip (the zoo allows no file over 25 MB): they are written next to it as
  ``NAME_vVERSION_model.pt`` to be uploaded to ``--url``, and ``large_files.yml`` lists their path, url and
  SHA-256 hash, from which the zoo's tools download them. ``--inline-weights`` puts them into the zip instead.

The checkpoint (``--checkpoint``, default the bundle's ``models/model.pt``) sets the network settings it was
trained with (classes, channels, filters, patch size, and for MSD-style data the label values, class names and
slice axis) in the configs and metadata (output channel names, ``label_classes`` with the label values);
``--set KEY=VALUE`` sets other top-level settings (VALUE in YAML flow syntax, e.g. ``--set 'sw_batch_size=4'``).
A ``--set`` that contradicts the checkpoint is an error naming both values.

Security: the configs of the zip are run by everyone who uses the bundle. ``--set`` values are therefore plain
data, checked as every entry point checks settings (:func:`common.data.settings.check_data_value`): strings
starting with ``$`` (Python expressions), ``%`` (macros, which may load other files) or ``@`` (references) and
mappings with ``_``-keys such as ``_target_`` (which instantiate any callable) are refused unless
``--allow-expressions`` is given. The bundle name must be a plain folder name under
the bundles folder; the staging copy lives in a temporary folder removed at the end; an existing zip is never
replaced without ``--overwrite``.

TorchScript (as the zoo's CI runs it) from the unzipped bundle:

    python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \
        --meta_file configs/metadata.json --config_file configs/inference.json
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import json
import re
import shutil
import sys
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python scripts/export_bundle.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from common.data.settings import parse_settings  # noqa: E402
from common.errors import OptionValueError, OutputExistsError  # noqa: E402
from common.files import atomic_output  # noqa: E402
from common.networks.weights import (  # noqa: E402
    NETWORK_SETTINGS_KEY,
    check_network_settings,
    load_network_weights,
    network_settings_of,
    read_network_state,
)

PACKAGE = "common"
VENDOR_PACKAGE = "scripts"
MAX_ZIP_MEMBER_BYTES = 25 * 1024 * 1024  # the model zoo's limit per file
BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# run outputs, caches and the generator's spec (bundle.yaml) stay behind
EXCLUDED_NAMES = {"models", "eval", "predictions", "runs", "__pycache__", ".ipynb_checkpoints", "bundle.yaml"}
# packages that MONAI components named in the configs load lazily (LoadImaged -> nibabel, ...), not seen as imports
RUNTIME_PACKAGES = ("nibabel", "pytorch-ignite", "tensorboard", "tqdm", "pyyaml", "fire")
ZOO_METADATA_KEYS = {"name"}  # not in the schema's properties but in every model-zoo bundle's metadata
PACKAGE_REFERENCE = re.compile(rf"(?<![\w.]){PACKAGE}((?:\.\w+)+)")
PACKAGE_WORD = re.compile(rf"(?<![\w.]){PACKAGE}(?=\.|\s+import\b)")
CONFIG_IMPORT = re.compile(r"(?:\bimport|\bfrom|_target_:)\s+([A-Za-z_]\w*)")
SCRIPT_COMMAND = re.compile(r"python3? scripts/(prepare_\w+)\.py")  # data preparation, vendored into the zip
REPOSITORY_BLOCK = re.compile(r"<!-- repository: (\w+) -->\n.*?<!-- /repository -->\n", re.DOTALL)
REPOSITORY_FILE = re.compile(r"`((?:scripts|tests|common)/[\w*/.-]+\.py)`")  # repository files named in the docs
GENERATED_LINE = re.compile(r"^(?:#|<!--).*\bgenerated by\b.*\n", re.MULTILINE | re.IGNORECASE)


def module_file(package_dir: Path, dotted: str) -> Path | None:
    """The file of module ``dotted`` (``common.a.b``) under ``package_dir``'s parent, or None if there is none."""
    base = package_dir.parent.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def longest_module(package_dir: Path, dotted: str) -> str | None:
    """The longest prefix of ``dotted`` (``common.losses.RegionWiseLoss``) that names a module."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if module_file(package_dir, name) is not None:
            return name
    return None


def _imported_names(path: Path, module: str) -> list[str]:
    """Absolute dotted names imported by the module at ``path`` (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def module_closure(package_dir: Path, roots: Iterable[str], sources: Iterable[Path] = ()) -> tuple[set[str], set[str]]:
    """Follow imports from ``roots`` and from the scripts ``sources`` within the package.

    Args:
        package_dir: the ``common`` folder.
        roots: dotted names referenced by the configs.
        sources: other files to vendor (data preparation scripts) whose imports are followed too.

    Returns:
        The package's modules needed (parent packages included) and the top-level names of the other modules
        they import.

    Raises:
        ModuleNotFoundError: a referenced name of the package has no module.
    """
    needed: set[str] = set()
    external: set[str] = set()
    pending = []
    for name in roots:
        module = longest_module(package_dir, name)
        if module is None:
            raise ModuleNotFoundError(f"{name}: referenced by the configs but not found under {package_dir}")
        pending.append(module)
    imported = [(path, path.stem) for path in sources]
    while pending or imported:
        if pending:
            module = pending.pop()
            if module in needed:
                continue
            needed.add(module)
            parts = module.split(".")
            pending += [".".join(parts[:end]) for end in range(1, len(parts))]  # parent packages
            imported.append((module_file(package_dir, module), module))
        path, module = imported.pop()
        for name in _imported_names(path, module):
            if name.split(".")[0] == PACKAGE:
                found = longest_module(package_dir, name)
                if found is not None:
                    pending.append(found)
            elif name:
                external.add(name.split(".")[0])
    return needed, external


def distribution_versions(top_level_names: Iterable[str], extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed public versions of the distributions providing ``top_level_names`` (stdlib and this project
    skipped) and of ``extra``."""
    providers = importlib.metadata.packages_distributions()
    own = set(providers.get(PACKAGE, []))
    distributions = set(extra)
    for name in top_level_names:
        if name in sys.stdlib_module_names or name in (PACKAGE, VENDOR_PACKAGE):
            continue
        distributions.update(providers.get(name, []))
    versions = {}
    for distribution in sorted(distributions - own, key=str.lower):
        try:
            versions[distribution] = importlib.metadata.version(distribution).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def bundle_folder(bundles_dir: Path, name: str) -> Path:
    """The folder of bundle ``name``, refusing names that are not a plain folder of ``bundles_dir``.

    Raises:
        ValueError: ``name`` has path separators, ``..`` or other characters than letters, digits, ``_.-``.
        FileNotFoundError: no such bundle.
    """
    if not BUNDLE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"bundle name {name!r}: not a bundle folder name (letters, digits, '_', '.', '-'; no path separators, "
            "no '..')"
        )
    bundle = bundles_dir / name
    if not (bundle / "configs" / "inference.yaml").is_file() or bundle.resolve().parent != bundles_dir.resolve():
        raise FileNotFoundError(f"{bundle}: not a bundle (no configs/inference.yaml)")
    return bundle


def network_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's ``network_settings`` mapping resolved against its top-level entries (``'@key'`` values)."""
    resolved = {}
    for key, value in dict(config.get("network_settings") or {}).items():
        reference = value[1:] if isinstance(value, str) and value.startswith("@") else None
        resolved[key] = config.get(reference) if reference is not None else value
    return resolved


def check_fits_network(checkpoint: Path, config: Mapping[str, Any], source: str) -> None:
    """Build the config's ``network_def`` and load ``checkpoint`` into it strictly (every key, heads included), so
    that ``monai.bundle.load`` of this config gets every weight from the shipped file.

    Raises:
        ValueError: other network settings or weights of another network (the message names the checkpoint).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser(dict(config))
    network = parser.get_parsed_content("network_def", instantiate=True)
    try:
        load_network_weights(network, checkpoint, network_settings(config))
    except ValueError as error:
        raise ValueError(f"{error}; network_def of {source}") from error


def class_labels(settings: Mapping[str, Any]) -> list[tuple[str, Any]] | None:
    """(name, label value) of each output class from the checkpoint's ``class_names`` (foreground, training order)
    and ``label_values``; None when the settings do not name the classes."""
    names = settings.get("class_names")
    if not names:
        return None
    names = ["background", *names]
    values = settings.get("label_values") or list(range(len(names)))
    if len(values) != len(names) or len(names) != settings.get("num_classes", len(names)):
        raise ValueError(
            f"checkpoint settings: {len(names) - 1} class_names and {len(values)} label_values do not fit "
            f"num_classes {settings.get('num_classes')}"
        )
    return list(zip(names, values, strict=True))


def update_metadata(metadata: dict[str, Any], schema_keys: set[str], settings: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata with schema keys only, the channels and classes of ``settings`` and the installed core versions.

    When the checkpoint names its classes (bundles of MSD-style data), the output channels are named after them and
    ``label_classes``/``pred_classes`` list their label values. When it has another number of classes than the
    bundle's metadata describes, and no names, every description of the classes is rewritten for that number
    (``background``, ``class 1`` ...). ``pred_classes`` describes what inference writes: a label map.
    """
    metadata = {key: value for key, value in metadata.items() if key in schema_keys | ZOO_METADATA_KEYS}
    formats = metadata.get("network_data_format", {})
    pred = formats.get("outputs", {}).get("pred")
    other_count = pred is not None and "num_classes" in settings and pred.get("num_channels") != settings["num_classes"]
    for section, key, setting in (("inputs", "image", "in_channels"), ("outputs", "pred", "num_classes")):
        entry = formats.get(section, {}).get(key)
        if entry is None or setting not in settings:
            continue
        channel_def = entry.get("channel_def", {})
        if entry.get("num_channels") != settings[setting] or len(channel_def) != settings[setting]:
            entry["num_channels"] = settings[setting]
            names = ["background", *(f"class {index}" for index in range(1, settings[setting]))]
            entry["channel_def"] = {
                str(index): (names[index] if key == "pred" else f"channel {index}")
                for index in range(settings[setting])
            }
    count = settings.get("num_classes", pred.get("num_channels") if pred else None)
    if (classes := class_labels(settings)) is not None:
        if pred is not None:
            pred["channel_def"] = {str(index): name for index, (name, _) in enumerate(classes)}
        listed = ", ".join(f"{value} {name}" for name, value in classes)
        metadata["label_classes"] = f"{listed} (label values of the training data; predictions are written in them)"
        metadata["pred_classes"] = (
            f"label map on the input grid with the label values {listed} (the argmax of the network's {count} "
            "output channels)"
        )
    elif other_count:
        metadata["label_classes"] = (
            f"0 background, 1..{count - 1} the classes of the training datalist ({count} classes)"
        )
        metadata["pred_classes"] = (
            f"label map on the input grid with the values 0 (background) to {count - 1}, one per class of the training "
            f"datalist (the argmax of the network's {count} output channels)"
        )
    core = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
    for distribution, field in core.items():  # the public version: "2.13.0", not the wheel's "2.13.0+cpu"
        metadata[field] = importlib.metadata.version(distribution).split("+")[0]
    return metadata


def requirements_block(metadata: Mapping[str, Any]) -> str:
    """README lines saying how to install the bundle's pinned requirements."""
    pins = [f"monai=={metadata['monai_version']}", f"torch=={metadata['pytorch_version']}"]
    pins += [f"numpy=={metadata['numpy_version']}"]
    pins += [f"{name}=={version}" for name, version in metadata.get("required_packages_version", {}).items()]
    return (
        "Install the requirements pinned in `configs/metadata.json`, then run the commands from the bundle folder "
        "(the one holding `configs/`):\n\n```bash\npip install " + " ".join(pins) + "\n```\n\n"
    )


TORCHSCRIPT_COMMAND = (
    "python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \\\n"
    "    --meta_file configs/metadata.json --config_file configs/inference.json"
)


def load_block(name: str) -> str:
    """README lines saying how to get the trained network in Python with ``monai.bundle.load``."""
    return (
        'The trained network in Python, every weight from `models/model.pt` (`workflow_type` `"train"` gives the\n'
        "same weights). Its code lives in `scripts/`, which MONAI puts on the import path only when it runs a\n"
        "workflow (`monai.bundle run`), so put the bundle folder there first:\n\n```python\nimport sys\n\n"
        "from monai.bundle import load\n\n"
        f'sys.path.insert(0, "/path/to/{name}")  # the bundle folder\n'
        f'network = load("{name}", bundle_dir="/path/to", workflow_type="inference", device="cpu")\n```\n'
    )


def bundle_blocks(name: str, metadata: Mapping[str, Any], weights_inline: bool) -> dict[str, str]:
    """The README paragraphs of the zip that replace the repository's (``<!-- repository: NAME -->`` blocks)."""
    weights = (
        "The trained weights `models/model.pt` are part of this bundle."
        if weights_inline
        else "Fetch the trained weights `models/model.pt` (their url and SHA-256 hash are in `large_files.yml`):\n\n"
        "```bash\npython -m monai.bundle download_large_files\n```"
    )
    return {
        "data": "The preparation scripts ship with this bundle (`scripts/`); run every command of this README from "
        "the bundle folder (the one holding `configs/`).\n",
        "commands": requirements_block(metadata)
        + weights
        + "\n\nThe TorchScript module of the inference network (as the model zoo builds it):\n\n```bash\n"
        + TORCHSCRIPT_COMMAND
        + "\n```\n\n"
        + load_block(name),
    }


def rewrite_readme(text: str, name: str, metadata: Mapping[str, Any], weights_inline: bool, staged: Path) -> str:
    """The README of the zip: JSON configs, vendored scripts, the bundle's own install, weights and TorchScript
    commands instead of the repository's, and files of the repository that the zip does not hold marked as such.

    Args:
        text: the bundle's README in the repository.
        name: the bundle's name.
        metadata: the exported metadata (pinned versions).
        weights_inline: whether ``models/model.pt`` is in the zip (else ``large_files.yml`` lists it).
        staged: the staged bundle folder (its configs and vendored scripts in place).
    """
    text = GENERATED_LINE.sub("", text)
    blocks = bundle_blocks(name, metadata, weights_inline)
    text = REPOSITORY_BLOCK.sub(lambda match: blocks[match.group(1)], text)
    stems = "|".join(sorted(re.escape(path.stem) for path in (staged / "configs").glob("*.json")))
    text = re.sub(rf"(?<![\w/.-])(?:configs/)?({stems})\.ya?ml\b", r"configs/\1.json", text)
    text = SCRIPT_COMMAND.sub(rf"python -m {VENDOR_PACKAGE}.\1", PACKAGE_WORD.sub(VENDOR_PACKAGE, text))
    text = text.replace(f"(`bundles/{name}`)", "(the bundle folder)").replace(f"bundles/{name}", name)

    def mark_repository_file(match: re.Match) -> str:
        held = any(path.is_file() for path in staged.glob(match.group(1)))
        return match.group(0) if held else f"{match.group(0)} of the project's repository"

    return REPOSITORY_FILE.sub(mark_repository_file, text)


def write_zip(staged: Path, output: Path, overwrite: bool) -> None:
    """Zip ``staged`` (its folder name as the top level) into ``output`` atomically, never replacing a zip
    unless ``overwrite``.

    Raises:
        OutputExistsError: ``output`` exists (also one written meanwhile) and ``overwrite`` is False; it is a
            ``FileExistsError``.
    """
    try:
        with atomic_output(output, replace=overwrite) as partial:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(staged.rglob("*")):
                    if path.is_file():
                        archive.write(path, path.relative_to(staged.parent).as_posix())
    except FileExistsError as error:  # without overwrite: the zip exists (also one written meanwhile), kept
        raise OutputExistsError(f"{output}: already exists; pass --overwrite to replace it") from error


def export_bundle(
    name: str,
    output_dir: Path,
    checkpoint: Path | None = None,
    settings: dict[str, Any] | None = None,
    url: str | None = None,
    inline_weights: bool = False,
    bundles_dir: Path = REPO_ROOT / "bundles",
    package_dir: Path = REPO_ROOT / PACKAGE,
    schema_keys: Iterable[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the model-zoo submission ``output_dir/NAME_vVERSION.zip`` of bundle ``name``.

    Args:
        name: bundle folder name under ``bundles_dir``.
        output_dir: folder of the zip (and of the weights file when they are not inlined).
        checkpoint: weights to ship; default ``<bundle>/models/model.pt``.
        settings: top-level config settings to replace (parsed by :func:`parse_settings`).
        url: where the weights will be downloadable from (``large_files.yml``); required unless ``inline_weights``.
        inline_weights: put ``models/model.pt`` into the zip (local sharing) instead of ``large_files.yml``.
        bundles_dir: folder of the bundles.
        package_dir: the shared package to vendor from.
        schema_keys: metadata keys of the zoo's schema; default those of ``meta_schema_20240725.json``.
        overwrite: replace an existing zip (and weights file).

    Returns:
        The zip file.

    Raises:
        ValueError: a bad bundle name, a setting no config defines, a setting contradicting the checkpoint, a
            checkpoint that does not fit the network, no ``url`` without ``inline_weights``, a file over 25 MB.
        FileNotFoundError: no such bundle or checkpoint.
        FileExistsError: the zip or weights file exists and ``overwrite`` is False.
    """
    bundle = bundle_folder(bundles_dir, name)
    checkpoint = checkpoint or bundle / "models" / "model.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found; train the bundle or pass --checkpoint")
    if not inline_weights and not url:
        raise OptionValueError(
            "--url: where the weights will be downloadable from (large_files.yml), or --inline-weights"
        )
    configs = {path.stem: yaml.safe_load(path.read_text()) for path in sorted((bundle / "configs").glob("*.yaml"))}
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    version = str(metadata.get("version", ""))
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"{bundle}/configs/metadata.json: version {version!r} is not X.Y.Z")
    output = output_dir / f"{name}_v{version}.zip"
    weights_file = output_dir / f"{name}_v{version}_model.pt"
    targets = [output] if inline_weights else [output, weights_file]
    if not overwrite and (existing := [str(path) for path in targets if path.exists()]):
        raise FileExistsError(f"{', '.join(existing)}: already exists; pass --overwrite to replace it")

    state = read_network_state(checkpoint)
    trained = network_settings_of(state)
    settings = dict(settings or {})
    check_network_settings(trained, settings, f"{checkpoint} (against --set)")
    defined = {key for config in configs.values() for key in config}
    settings = {**{key: value for key, value in trained.items() if key in defined}, **settings}
    if missing := set(settings) - defined:
        raise OptionValueError(f"--set {sorted(missing)}: not a top-level setting of {name}'s configs")
    for config in configs.values():
        config.update({key: value for key, value in settings.items() if key in config})
    for workflow in ("train", "inference"):
        check_fits_network(checkpoint, configs[workflow], f"{name}/configs/{workflow}.yaml")

    schema_keys = set(schema_keys) if schema_keys is not None else default_schema_keys()
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / name
        shutil.copytree(bundle, staged, ignore=lambda folder, names: [n for n in names if n in EXCLUDED_NAMES])
        references, config_names = set(), set()
        for stem, config in configs.items():
            text = json.dumps(config, indent=4)
            references |= {PACKAGE + match for match in PACKAGE_REFERENCE.findall(text)}
            config_names |= set(CONFIG_IMPORT.findall(yaml.safe_dump(config)))
            (staged / "configs" / f"{stem}.yaml").unlink()
            (staged / "configs" / f"{stem}.json").write_text(PACKAGE_WORD.sub(VENDOR_PACKAGE, text) + "\n")

        readme = staged / "docs" / "README.md"
        scripts = sorted({match for match in SCRIPT_COMMAND.findall(readme.read_text())})
        script_files = [REPO_ROOT / "scripts" / f"{script}.py" for script in scripts]
        if unknown := [str(path) for path in script_files if not path.is_file()]:
            raise FileNotFoundError(f"{readme.relative_to(staged)} names scripts that do not exist: {unknown}")
        modules, external = module_closure(package_dir, references, script_files)
        vendor_modules(package_dir, modules, script_files, staged / VENDOR_PACKAGE)

        pinned = distribution_versions(
            external | config_names, extra=[*metadata.get("required_packages_version", {}), *RUNTIME_PACKAGES]
        )
        metadata = update_metadata(metadata, schema_keys, settings)
        metadata["required_packages_version"] = {
            key: value for key, value in pinned.items() if key not in {"monai", "torch", "numpy"}
        }
        (staged / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4) + "\n")
        readme.write_text(rewrite_readme(readme.read_text(), name, metadata, inline_weights, staged))
        license_file = staged / "LICENSE"
        license_file.write_text(GENERATED_LINE.sub("", license_file.read_text()))

        (staged / "models").mkdir()
        weights = staged / "models" / "model.pt"
        torch.save(with_network_settings(state, {**network_settings(configs["inference"]), **trained}), weights)
        if not inline_weights:
            digest = hashlib.sha256(weights.read_bytes()).hexdigest()
            large_files = {"large_files": [{"path": "models/model.pt", "url": url, "hash_val": digest,
                                            "hash_type": "sha256"}]}  # fmt: skip
            (staged / "large_files.yml").write_text(yaml.safe_dump(large_files, sort_keys=False))
            with atomic_output(weights_file) as tmp_weights:
                shutil.move(weights, tmp_weights)
        oversized = [
            f"{path.relative_to(staged)} ({path.stat().st_size / 2**20:.0f} MB)"
            for path in staged.rglob("*")
            if path.is_file() and path.stat().st_size > MAX_ZIP_MEMBER_BYTES and path != weights
        ]
        if oversized:
            raise ValueError(f"{name}: files over the model zoo's 25 MB limit: {oversized}")
        write_zip(staged, output, overwrite)
    return output


def with_network_settings(state: Mapping[str, torch.Tensor], settings: Mapping[str, Any]) -> OrderedDict:
    """A copy of ``state`` carrying ``settings`` as its network settings (see ``common.networks.weights``)."""
    copy = OrderedDict(state)
    copy._metadata = OrderedDict(getattr(state, "_metadata", {}))  # type: ignore[attr-defined]
    copy._metadata[NETWORK_SETTINGS_KEY] = dict(settings)  # type: ignore[attr-defined]
    return copy


def default_schema_keys() -> set[str]:
    """The metadata keys of the model zoo's schema ``meta_schema_20240725.json`` (properties)."""
    return {
        "schema", "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
        "supported_apps", "task", "description", "authors", "copyright", "data_source", "data_type",
        "image_classes", "label_classes", "pred_classes", "eval_metrics", "intended_use", "references",
        "network_data_format", "changelog",
    }  # fmt: skip


def vendor_modules(package_dir: Path, modules: Iterable[str], scripts: Iterable[Path], destination: Path) -> None:
    """Copy ``modules`` of the package and the ``scripts`` into ``destination`` (the bundle's ``scripts``),
    rewriting the imports and the scripts' usage lines."""
    sources = [(module_file(package_dir, module), package_dir) for module in sorted(modules)]
    for source, root in [*sources, *[(script, script.parent) for script in scripts]]:
        target = destination.joinpath(*source.relative_to(root).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = SCRIPT_COMMAND.sub(
            rf"python -m {VENDOR_PACKAGE}.\1", PACKAGE_WORD.sub(VENDOR_PACKAGE, source.read_text())
        )
        target.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="bundle folder under bundles/ (a plain folder name)")
    parser.add_argument("output_dir", type=Path, help="folder of the zip NAME_vVERSION.zip (and of the weights)")
    parser.add_argument("--checkpoint", type=Path, help="weights to ship (default: the bundle's models/model.pt)")
    parser.add_argument("--url", help="where the weights will be downloadable from (written to large_files.yml)")
    parser.add_argument("--inline-weights", action="store_true", help="put the weights into the zip (local sharing)")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="replace a top-level setting of the configs; VALUE is plain YAML flow data ('$' expressions, '%%' "
        "macros, '@' references and '_target_' keys are refused: they would run code for every user of the bundle)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-expressions", action="store_true", help="accept --set values that are code ($, %%, @, _target_)"
    )
    parser.add_argument("--bundles-dir", type=Path, default=REPO_ROOT / "bundles")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing zip and weights file")
    args = parser.parse_args(argv)
    try:
        path = export_bundle(
            args.name,
            args.output_dir,
            checkpoint=args.checkpoint,
            settings=parse_settings(
                args.settings, allow_code=args.allow_expressions, allow_option="--allow-expressions"
            ),
            url=args.url,
            inline_weights=args.inline_weights,
            bundles_dir=args.bundles_dir,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, FileExistsError, ValueError, ModuleNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
