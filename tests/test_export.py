"""scripts/export_bundle.py: the exported zip runs, verifies and exports to TorchScript without this repository."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

REPO_ROOT = Path(__file__).resolve().parents[1]
INFERENCE = REPO_ROOT / "bundles" / "acdc17_rrw" / "configs" / "inference.yaml"
SCHEMA_FILE = REPO_ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
TINY_NETWORK = {"patch_size": [64, 64], "filters": [4, 8, 8, 16, 16, 16], "sw_batch_size": 8}

# Runs in a fresh interpreter: drops the editable install of this project and every path inside the repository,
# checks that `common` cannot be imported, then runs the model-zoo tools from the bundle folder (the cwd).
ISOLATED_CHECKS = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    repo, schema, images, predictions = sys.argv[1:5]
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    sys.path[:] = [os.getcwd()] + [p for p in sys.path if "__editable__" not in p and not p.startswith(repo)]
    sys.path_importer_cache.clear()
    report = {"common_importable": importlib.util.find_spec("common") is not None,
              "repo_on_path": any(os.path.abspath(p or ".").startswith(repo) for p in sys.path)}
    from monai.bundle import ConfigParser, ckpt_export, run, verify_metadata, verify_net_in_out
    import scripts
    report["scripts_file"] = scripts.__file__
    if os.path.isfile(schema):
        verify_metadata(meta_file="configs/metadata.json", filepath=schema)
        report["verify_metadata"] = "ok"
    verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json", config_file="configs/inference.yaml",
                      n=2, device="cpu")
    report["verify_net_in_out"] = "ok"
    # DynUNet with deep supervision cannot be scripted (it assigns to a list of heads), so trace it in eval mode
    ckpt_export(net_id="network_def", filepath="models/model.ts", ckpt_file="models/model.pt",
                meta_file="configs/metadata.json", config_file="configs/inference.yaml", use_trace=True,
                input_shape=[1, 1, 64, 64])
    report["ckpt_export"] = "ok"
    run(config_file="configs/inference.yaml", dataset_dir=images, output_dir=predictions, progress=False)
    train = ConfigParser()  # the training config's objects come from the vendored modules as well
    train.read_config("configs/train.yaml")
    report["train_objects"] = [type(train.get_parsed_content(key)).__name__
                               for key in ("loss", "optimizer", "lr_scheduler", "train#preprocessing")]
    report["loaded_common"] = sorted(name for name in sys.modules if name == "common" or name.startswith("common."))
    print("REPORT " + json.dumps(report))
    """
)


def load_export_script():
    spec = importlib.util.spec_from_file_location("export_bundle", REPO_ROOT / "scripts" / "export_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_network() -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser.update(TINY_NETWORK)
    return parser.get_parsed_content("network_def", instantiate=True)


@pytest.fixture(scope="module")
def export_script():
    return load_export_script()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save({"model": tiny_network().state_dict(), "epoch": torch.tensor(3)}, path)  # as CheckpointSaver saves
    return path


@pytest.fixture(scope="module")
def exported(export_script, tiny_checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    settings = [f"--set={key}={json.dumps(value)}" for key, value in TINY_NETWORK.items()]
    status = export_script.main(["acdc17_rrw", str(folder / "acdc17_rrw.zip"), "--checkpoint", str(tiny_checkpoint)])
    assert status == 2  # the full-size network of the config does not fit the tiny weights
    status = export_script.main(
        ["acdc17_rrw", str(folder / "acdc17_rrw.zip"), "--checkpoint", str(tiny_checkpoint), *settings]
    )
    assert status == 0
    with zipfile.ZipFile(folder / "acdc17_rrw.zip") as archive:
        archive.extractall(folder / "unzipped")
    return folder / "unzipped" / "acdc17_rrw"


def test_zip_holds_vendored_modules_bare_weights_and_pinned_versions(exported, tiny_checkpoint):
    vendored = {path.relative_to(exported / "scripts").as_posix() for path in (exported / "scripts").rglob("*.py")}
    assert {"__init__.py", "engines.py", "inference.py", "transforms.py", "maps.py", "data.py"} <= vendored
    assert {"losses/__init__.py", "losses/region_wise.py", "evaluation.py"} <= vendored
    assert not {"plots.py", "statistics.py", "releases.py", "synthetic.py"} & vendored  # not needed by configs
    for path in [*(exported / "scripts").rglob("*.py"), *(exported / "configs").glob("*.yaml")]:
        text = path.read_text()
        assert "from common" not in text and "common.engines" not in text and "import common" not in text, path
    assert not (exported / "models" / "checkpoint_final.pt").exists() and not (exported / "bundle.yaml").exists()

    state = torch.load(exported / "models" / "model.pt", weights_only=True)
    expected = torch.load(tiny_checkpoint, weights_only=True)["model"]
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in state)

    metadata = json.loads((exported / "configs" / "metadata.json").read_text())
    assert metadata["monai_version"] == importlib.metadata.version("monai")
    assert metadata["pytorch_version"] == importlib.metadata.version("torch").split("+")[0]
    assert metadata["numpy_version"] == np.__version__
    required = metadata["required_packages_version"]
    for distribution in ("nibabel", "edt", "pytorch-ignite", "scipy"):
        assert required[distribution] == importlib.metadata.version(distribution)
    assert "imbalance-seg-bundles" not in required

    inference = ConfigParser()
    inference.read_config(str(exported / "configs" / "inference.yaml"))
    assert inference["filters"] == TINY_NETWORK["filters"] and inference["patch_size"] == TINY_NETWORK["patch_size"]


def test_exported_bundle_runs_without_the_repository(exported, tmp_path):
    launcher = tmp_path / "isolated_checks.py"
    launcher.write_text(ISOLATED_CHECKS)
    images, predictions = tmp_path / "images", tmp_path / "predictions"
    images.mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    nib.save(nib.Nifti1Image(rng.normal(size=(40, 36, 3)).astype(np.float32), affine), images / "case.nii.gz")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, str(launcher), str(REPO_ROOT), str(SCHEMA_FILE), str(images), str(predictions)]
    result = subprocess.run(command, cwd=exported, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))[7:])
    assert report["common_importable"] is False and report["repo_on_path"] is False
    assert report["loaded_common"] == []
    assert Path(report["scripts_file"]) == exported / "scripts" / "__init__.py"
    assert report["verify_net_in_out"] == report["ckpt_export"] == "ok"
    assert report["train_objects"] == ["NNUNetDeepSupervisionLoss", "Adam", "PolynomialLR", "Compose"]
    if SCHEMA_FILE.is_file():
        assert report["verify_metadata"] == "ok"

    prediction = nib.load(predictions / "case.nii.gz")
    assert prediction.shape == (40, 36, 3)
    np.testing.assert_allclose(prediction.affine, affine)
    assert set(np.unique(np.asanyarray(prediction.dataobj))) <= {0, 1, 2, 3}

    scripted = torch.jit.load(exported / "models" / "model.ts")  # the TorchScript export gives the eager outputs
    network = tiny_network()
    network.load_state_dict(torch.load(exported / "models" / "model.pt", weights_only=True))
    network.eval()
    for sample in (torch.randn(1, 1, 64, 64), torch.randn(2, 1, 96, 128)):  # also sizes other than the traced one
        with torch.no_grad():
            torch.testing.assert_close(scripted(sample), network(sample))


def test_export_refuses_unknown_settings_and_foreign_checkpoints(export_script, tmp_path):
    checkpoint = tmp_path / "other.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, checkpoint)
    with pytest.raises(ValueError, match=r"other\.pt: does not fit network_def"):
        export_script.export_bundle("acdc17_rrw", tmp_path / "a.zip", checkpoint=checkpoint)
    with pytest.raises(ValueError, match="no_such_key"):
        export_script.export_bundle(
            "acdc17_rrw", tmp_path / "a.zip", checkpoint=checkpoint, settings={"no_such_key": 1}
        )
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pt: cannot read"):
        export_script.export_bundle("acdc17_rrw", tmp_path / "a.zip", checkpoint=tmp_path / "notes.pt")
    assert not (tmp_path / "a.zip").exists()
