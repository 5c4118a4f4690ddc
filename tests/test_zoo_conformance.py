"""The model zoo's own checks (Project-MONAI/model-zoo ci/verify_bundle.py and ci/unit_tests) on every bundle.

For every bundle under bundles/: the directory layout, version and changelog, the metadata against the zoo's
schema (local copy), the data shape with ``verify_net_in_out`` at its defaults (n=1, as the zoo's CI runs it),
the TorchScript export with ``ckpt_export`` (scripting, from an initialised checkpoint written here, as the zoo's
``_produce_fake_weights``), and ``check_properties()`` of the train and inference workflows (after
``initialize()``, on tiny fake data in the release's layout, as the zoo's unit tests). And for the exported zip of
every bundle (tiny weights), the same checks in one fresh interpreter whose ``common`` (this project's
package) cannot be imported, as in the zoo's CI, plus ``monai.bundle.load`` of the train and inference configs from
another working directory, returning the network with every weight from the shipped file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import SCHEMA_FILE
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from test_bundles import CASES, RELEASE_WRITERS, root_bundle

from common.networks.weights import save_network_weights

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning"),
]

REPO = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO / "bundles"
ALL_BUNDLES = sorted(path.parent.parent.name for path in BUNDLES_DIR.glob("*/configs/metadata.json"))
NECESSARY_FILES = ["configs/metadata.json", "LICENSE"]  # verify_bundle.py's necessary and preferred files
BUNDLE_FILES = [
    "configs/inference.yaml",
    "configs/train.yaml",
    "configs/evaluate.yaml",
    "configs/multi_gpu_train.yaml",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
]
RELEASE_OF = {name: CASES[root_bundle(name)].release for name in ALL_BUNDLES}
ZOO_MAX_FILE_BYTES = 25 * 1024 * 1024


def bundle_file(name: str, relative: str) -> str:
    return str(BUNDLES_DIR / name / relative)


def narrow(name: str) -> dict:
    """Overrides giving the bundle's network fewer channels (the zoo's checks do not depend on widths; shapes,
    depth and modules stay those of the bundle), so that every bundle's checks take seconds."""
    return {key: value for key, value in CASES[root_bundle(name)].network.items() if key not in ("patch_size",)}


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    """One tiny fake release per data set layout, prepared by its scripts/prepare_*.py (read-only)."""
    root = tmp_path_factory.mktemp("zoo_releases")
    kinds = sorted(set(RELEASE_OF.values()))
    return {kind: RELEASE_WRITERS[kind](root / kind) for kind in kinds}


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_directory_layout_version_and_changelog(name):
    bundle = BUNDLES_DIR / name
    for relative in [*NECESSARY_FILES, *BUNDLE_FILES]:
        assert (bundle / relative).is_file(), f"{name}: {relative} missing"
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", metadata["version"]), metadata["version"]
    assert metadata["version"] in metadata["changelog"], "the version must have a changelog entry"
    assert not (bundle / "models" / "model.pt").exists() or (bundle / "large_files.yml").exists()


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_metadata_passes_the_zoo_schema_with_its_keys_only(name, schema_file):
    meta_file = bundle_file(name, "configs/metadata.json")
    verify_metadata(meta_file=meta_file, filepath=str(schema_file))
    schema_keys = set(json.loads(schema_file.read_text())["properties"])
    assert set(json.loads(Path(meta_file).read_text())) <= schema_keys | {"name"}
    required = json.loads(Path(meta_file).read_text())["required_packages_version"]
    assert "imbalance-seg-bundles" not in required  # this project is on no package index


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_data_shape_with_the_zoo_defaults(name):
    verify_net_in_out(
        net_id="network_def",
        meta_file=bundle_file(name, "configs/metadata.json"),
        config_file=bundle_file(name, "configs/inference.yaml"),
        bundle_root=str(BUNDLES_DIR / name),
        device="cpu",
        **narrow(name),
    )  # n=1, p=1, any=1: the smallest spatial shapes the metadata allows


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_torchscript_export_by_scripting(name, tmp_path):
    config_file = bundle_file(name, "configs/inference.yaml")
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(narrow(name))
    network = parser.get_parsed_content("network_def")
    torch.save(network.state_dict(), tmp_path / "model.pt")  # as the zoo's _produce_fake_weights
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=bundle_file(name, "configs/metadata.json"),
        config_file=config_file,
        bundle_root=str(BUNDLES_DIR / name),
        **narrow(name),
    )
    assert (tmp_path / "model.ts").stat().st_size > 0


def workflow(name: str, workflow_type: str, config: str, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=bundle_file(name, f"configs/{config}.yaml"),
        meta_file=bundle_file(name, "configs/metadata.json"),
        logging_file=bundle_file(name, "configs/logging.conf"),
        **overrides,
    )


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_train_workflow_properties(name, releases, tmp_path):
    trainer = workflow(
        name, "train", "train", bundle_root=str(tmp_path), dataset_dir=str(releases[RELEASE_OF[name]]),
        cache_rate=0.0, num_workers=0, **CASES[root_bundle(name)].network,
    )  # fmt: skip
    trainer.initialize()
    assert trainer.check_properties() == []
    trainer.finalize()


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_inference_workflow_properties(name, releases, tmp_path):
    inferer = workflow(
        name, "infer", "inference", bundle_root=str(tmp_path), dataset_dir=str(releases[RELEASE_OF[name]]),
        output_dir=str(tmp_path / "predictions"), **CASES[root_bundle(name)].network,
    )  # fmt: skip
    inferer.initialize()
    assert inferer.check_properties() == []
    inferer.finalize()


# Runs in a fresh interpreter: drops the editable install of this project and every path inside the repository,
# checks that `common` cannot be imported, then runs the zoo's checks from each unzipped bundle's folder (each
# bundle's own `scripts` package: the previous bundle's is unloaded first). One interpreter for all the bundles.
ISOLATED_ZOO_CHECKS = textwrap.dedent(
    """
    import importlib, importlib.util, json, os, sys, traceback
    repo, schema, bundles_dir, elsewhere, *names = sys.argv[1:]
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    sys.path[:] = [p for p in sys.path if p and "__editable__" not in p and not p.startswith(repo)]
    sys.path_importer_cache.clear()
    import torch
    from monai.bundle import ckpt_export, load, verify_metadata, verify_net_in_out
    reports = {}
    for name in names:
        bundle = os.path.join(bundles_dir, name)
        os.chdir(bundle)
        sys.path.insert(0, bundle)
        for module in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[module]
        importlib.invalidate_caches()
        report = reports[name] = {"common_importable": importlib.util.find_spec("common") is not None}
        try:
            verify_metadata(meta_file="configs/metadata.json", filepath=schema)
            verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json",
                              config_file="configs/inference.json", bundle_root=bundle, device="cpu")
            ckpt_export(net_id="network_def", filepath="models/verify_model.ts", ckpt_file="models/model.pt",
                        meta_file="configs/metadata.json", config_file="configs/inference.json", bundle_root=bundle)
            torch.jit.load("models/verify_model.ts")
            shipped = torch.load("models/model.pt", weights_only=True)
            os.chdir(elsewhere)  # the README's monai.bundle.load: from any folder, the bundle folder on sys.path
            for workflow in ("train", "inference"):
                network = load(name, bundle_dir=bundles_dir, workflow_type=workflow, device="cpu", progress=False)
                state = network.state_dict()
                report[workflow] = {
                    "type": type(network).__name__,
                    "keys_match": list(state) == list(shipped),
                    "from_file": all(torch.equal(state[key], value) for key, value in shipped.items() if key in state),
                }
        except Exception:
            report["error"] = traceback.format_exc()[-3000:]
        report["loaded_common"] = sorted(n for n in sys.modules if n == "common" or n.startswith("common."))
        sys.path.remove(bundle)
    print("REPORT " + json.dumps(reports))
    """
)


@pytest.fixture(scope="module")
def export_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_bundle", REPO / "scripts" / "export_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_networks(name: str) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """The training and inference ``network_def`` of ``name``, narrow, and the inference network settings."""
    case = CASES[root_bundle(name)]
    inference = ConfigParser()
    inference.read_config(bundle_file(name, "configs/inference.yaml"))
    inference.update({**case.network, **case.inference})
    settings = inference.get_parsed_content("network_settings")
    train = ConfigParser()
    train.read_config(bundle_file(name, "configs/train.yaml"))
    train.update({**case.network, **settings})
    torch.manual_seed(0)
    return train.get_parsed_content("network_def"), inference.get_parsed_content("network_def"), settings


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_the_inference_network_has_every_trained_weight(name):
    """models/model.pt (the training network's weights) loads strictly into the inference network: every tool
    (ckpt_export, monai.bundle.load, CheckpointLoader) gets all weights, none left at their initialisation."""
    training, inference, _ = tiny_networks(name)
    shapes = {key: value.shape for key, value in training.state_dict().items()}
    assert {key: value.shape for key, value in inference.state_dict().items()} == shapes
    inference.load_state_dict(training.state_dict())


def export_tiny_model(export_script, name: str, folder: Path) -> dict:
    """Export ``name`` with the weights of a tiny trained network; returns what the zoo checks expect."""
    case = CASES[root_bundle(name)]
    network, _, settings = tiny_networks(name)  # the training network of a tiny trained model
    save_network_weights(network, folder / f"{name}_trained.pt", settings)
    overrides = [f"--set={key}={json.dumps(value)}" for key, value in case.network.items() if key not in settings]
    url = f"https://example.org/{name}_model.pt"
    arguments = [name, str(folder / "dist"), "--checkpoint", str(folder / f"{name}_trained.pt"), "--url", url]
    assert export_script.main([*arguments, *overrides]) == 0
    version = json.loads(Path(bundle_file(name, "configs/metadata.json")).read_text())["version"]
    with zipfile.ZipFile(folder / "dist" / f"{name}_v{version}.zip") as archive:
        members = archive.infolist()
        archive.extractall(folder / "unzipped")
    weights = folder / "dist" / f"{name}_v{version}_model.pt"
    (folder / "unzipped" / name / "models").mkdir()  # what the zoo's download_large_files does
    (folder / "unzipped" / name / "models" / "model.pt").write_bytes(weights.read_bytes())
    return {"members": members, "network": type(network).__name__}


@pytest.fixture(scope="module")
def exported_reports(export_script, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("family_exports")
    exports = {name: export_tiny_model(export_script, name, folder) for name in ALL_BUNDLES}
    launcher = folder / "isolated_zoo_checks.py"
    launcher.write_text(ISOLATED_ZOO_CHECKS)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    elsewhere = folder / "elsewhere"  # a working directory outside the bundles
    elsewhere.mkdir()
    command = [sys.executable, str(launcher), str(REPO), str(SCHEMA_FILE), str(folder / "unzipped"), str(elsewhere)]
    command += ALL_BUNDLES
    result = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    reports = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))[7:])
    return {name: {**exports[name], **reports[name]} for name in ALL_BUNDLES}


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_exported_zip_passes_the_zoo_checks_without_this_repository(name, exported_reports):
    report = exported_reports[name]
    assert all(info.file_size <= ZOO_MAX_FILE_BYTES for info in report["members"])
    assert all(info.filename.startswith(f"{name}/") for info in report["members"])
    assert f"{name}/models/model.pt" not in [info.filename for info in report["members"]]  # in large_files.yml
    assert report["common_importable"] is False and report["loaded_common"] == []
    assert "error" not in report, report.get("error")
    for workflow in ("train", "inference"):  # monai.bundle.load returns the network, every weight from the file
        assert report[workflow] == {"type": report["network"], "keys_match": True, "from_file": True}, workflow
