"""Export a bundle of this collection as a self-contained model-zoo zip that runs without this repository.

    python scripts/export_bundle.py acdc17_rrw dist/acdc17_rrw.zip --checkpoint runs/acdc/models/model.pt
    python scripts/export_bundle.py acdc17_rrw tiny.zip --checkpoint tiny.pt --set 'filters=[4, 8, 8, 16, 16, 16]'

What the zip holds (one top-level folder named like the bundle):

- the bundle's files in the model-zoo layout (configs, docs, LICENSE), without earlier run outputs and without the
  generator spec ``bundle.yaml``;
- ``scripts/``: the modules of the ``common`` package that the configs need, found by following the imports from
  the configs' ``common.*`` references (not the whole package: plotting, statistics and data preparation are not
  needed to train, evaluate or run a bundle), with ``common.`` rewritten to ``scripts.``; the configs refer to
  ``scripts.*`` likewise (``monai.bundle`` run from the bundle folder imports it, as model-zoo bundles do);
- ``models/model.pt``: the network's bare state dict, taken from ``--checkpoint`` (a ``CheckpointSaver`` file with
  a ``"model"`` entry, a ``DistributedDataParallel`` state dict or a bare one) and checked against the
  inference config's ``network_def``;
- ``configs/metadata.json`` with the versions of MONAI, PyTorch, NumPy and every third-party package that the
  configs and the vendored modules import pinned to those installed here.

``--set KEY=VALUE`` (VALUE in JSON/YAML flow syntax) replaces a top-level one-line setting in every config that
defines it, e.g. the smaller network of a checkpoint trained with ``--filters`` overrides.

TorchScript: MONAI's DynUNet with deep supervision cannot be scripted (``torch.jit.script`` fails on its list of
heads), so export it by tracing in evaluation mode, which gives the plain ``(B, C, H, W)`` output::

    python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \
        --meta_file configs/metadata.json --config_file configs/inference.yaml --use_trace True \
        --input_shape "[1, 1, 224, 224]"
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from common.checkpoint import read_network_state

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "common"
VENDOR_PACKAGE = "scripts"
# run outputs, caches and the generator's spec (bundle.yaml: the configs are generated from it) stay behind
EXCLUDED_NAMES = {"models", "eval", "predictions", "runs", "__pycache__", ".ipynb_checkpoints", "bundle.yaml"}
# packages that MONAI components named in the configs load lazily (LoadImaged -> nibabel, ...), not seen as imports
RUNTIME_PACKAGES = ("nibabel", "pytorch-ignite", "tensorboard", "tqdm", "pyyaml", "fire")
PACKAGE_REFERENCE = re.compile(rf"(?<![\w.]){PACKAGE}((?:\.\w+)+)")
PACKAGE_WORD = re.compile(rf"(?<![\w.]){PACKAGE}(?=\.|\s+import\b)")
CONFIG_IMPORT = re.compile(r"(?:\bimport|\bfrom|_target_:)\s+([A-Za-z_]\w*)")


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


def module_closure(package_dir: Path, roots: Iterable[str]) -> tuple[set[str], set[str]]:
    """Follow imports from ``roots`` within the package.

    Args:
        package_dir: the ``common`` folder.
        roots: dotted names referenced by the configs.

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
    while pending:
        module = pending.pop()
        if module in needed:
            continue
        needed.add(module)
        parts = module.split(".")
        pending += [".".join(parts[:end]) for end in range(1, len(parts))]  # parent packages
        for name in _imported_names(module_file(package_dir, module), module):
            if name.split(".")[0] == PACKAGE:
                found = longest_module(package_dir, name)
                if found is not None:
                    pending.append(found)
            elif name:
                external.add(name.split(".")[0])
    return needed, external


def distribution_versions(top_level_names: Iterable[str], extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the distributions providing ``top_level_names`` (stdlib skipped) and of ``extra``."""
    providers = importlib.metadata.packages_distributions()
    own = set(providers.get(PACKAGE, []))
    distributions = set(extra)
    for name in top_level_names:
        if name in sys.stdlib_module_names or name == PACKAGE:
            continue
        distributions.update(providers.get(name, []))
    versions = {}
    for distribution in sorted(distributions - own, key=str.lower):
        try:
            versions[distribution] = importlib.metadata.version(distribution).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def parse_settings(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items, VALUE in YAML flow syntax.

    Raises:
        ValueError: an item without ``=``.
    """
    settings = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def apply_settings(text: str, settings: dict[str, Any]) -> tuple[str, set[str]]:
    """Replace the top-level one-line definitions of ``settings`` in a YAML config text.

    Returns:
        The new text and the keys replaced.
    """
    replaced = set()
    for key, value in settings.items():
        pattern = re.compile(rf"^{re.escape(key)}:[ \t]*\S[^\n]*$", re.MULTILINE)
        text, count = pattern.subn(lambda _, key=key, value=value: f"{key}: {json.dumps(value)}", text)
        if count:
            replaced.add(key)
    return text, replaced


def check_fits_network(state: dict[str, torch.Tensor], inference_config: Path, checkpoint: Path) -> None:
    """Load ``state`` strictly into the inference config's ``network_def``.

    Raises:
        ValueError: the weights are not those of this network (the message names the checkpoint).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(inference_config))
    network = parser.get_parsed_content("network_def", instantiate=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ValueError(
            f"{checkpoint}: does not fit network_def of {inference_config.name} ({first_line}); pass the "
            "training run's network settings with --set"
        ) from error


def vendor_modules(package_dir: Path, modules: Iterable[str], destination: Path) -> None:
    """Copy ``modules`` of the package into ``destination`` (the bundle's ``scripts``), rewriting the imports."""
    for module in sorted(modules):
        source = module_file(package_dir, module)
        target = destination.joinpath(*source.relative_to(package_dir).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(PACKAGE_WORD.sub(VENDOR_PACKAGE, source.read_text()))


def export_bundle(
    name: str,
    output: Path,
    checkpoint: Path | None = None,
    settings: dict[str, Any] | None = None,
    bundles_dir: Path = REPO_ROOT / "bundles",
    package_dir: Path = REPO_ROOT / PACKAGE,
    overwrite: bool = False,
) -> Path:
    """Write the self-contained zip of bundle ``name``.

    Args:
        name: bundle folder name under ``bundles_dir``.
        output: zip file to write.
        checkpoint: weights to ship; default ``<bundle>/models/model.pt``.
        settings: top-level config settings to replace (see :func:`apply_settings`).
        bundles_dir: folder of the bundles.
        package_dir: the shared package to vendor from.
        overwrite: replace an existing ``output``.

    Returns:
        The zip file.

    Raises:
        FileNotFoundError: no such bundle or checkpoint.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        ValueError: a setting no config defines on one line, or a checkpoint that does not fit the network.
    """
    bundle = bundles_dir / name
    configs = bundle / "configs"
    if not (configs / "inference.yaml").is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle (no configs/inference.yaml)")
    checkpoint = checkpoint or bundle / "models" / "model.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found; train the bundle or pass --checkpoint")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists; pass --overwrite to replace it")
    settings = settings or {}
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / name
        shutil.copytree(bundle, staged, ignore=lambda folder, names: [n for n in names if n in EXCLUDED_NAMES])
        references, config_names, replaced = set(), set(), set()
        for config in sorted((staged / "configs").glob("*.yaml")):
            text, keys = apply_settings(config.read_text(), settings)
            replaced |= keys
            references |= {PACKAGE + match for match in PACKAGE_REFERENCE.findall(text)}
            config_names |= set(CONFIG_IMPORT.findall(text))
            config.write_text(PACKAGE_WORD.sub(VENDOR_PACKAGE, text))
        if missing := set(settings) - replaced:
            raise ValueError(f"--set {sorted(missing)}: not a top-level one-line setting of {name}'s configs")

        state = read_network_state(checkpoint)
        with tempfile.TemporaryDirectory() as check_dir:  # the repository's configs with the settings applied
            original = Path(check_dir) / "inference.yaml"
            original.write_text(apply_settings((configs / "inference.yaml").read_text(), settings)[0])
            check_fits_network(state, original, checkpoint)
        (staged / "models").mkdir()
        torch.save(state, staged / "models" / "model.pt")

        modules, external = module_closure(package_dir, references)
        vendor_modules(package_dir, modules, staged / VENDOR_PACKAGE)
        metadata_path = staged / "configs" / "metadata.json"
        metadata = json.loads(metadata_path.read_text())
        pinned = distribution_versions(
            external | config_names, extra=[*metadata.get("required_packages_version", {}), *RUNTIME_PACKAGES]
        )
        core = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
        for distribution, field in core.items():  # the public version: "2.13.0", not the wheel's "2.13.0+cpu"
            metadata[field] = importlib.metadata.version(distribution).split("+")[0]
        metadata["required_packages_version"] = {k: v for k, v in pinned.items() if k not in core}
        metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")

        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".{output.name}.partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(staged.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(staged.parent).as_posix())
        partial.replace(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="bundle folder under bundles/")
    parser.add_argument("output", type=Path, help="zip file to write")
    parser.add_argument("--checkpoint", type=Path, help="weights to ship (default: the bundle's models/model.pt)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--bundles-dir", type=Path, default=REPO_ROOT / "bundles")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    args = parser.parse_args(argv)
    try:
        path = export_bundle(
            args.name,
            args.output,
            checkpoint=args.checkpoint,
            settings=parse_settings(args.settings),
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
