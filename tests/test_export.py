"""scripts/export_bundle.py: a model-zoo submission that runs without this repository, and refuses hostile input."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from common.networks.weights import read_network_settings, save_network_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "bundles" / "acdc17_rrw" / "configs" / "train.yaml"
VERSION = json.loads((REPO_ROOT / "bundles" / "acdc17_rrw" / "configs" / "metadata.json").read_text())["version"]
ZIP_NAME = f"acdc17_rrw_v{VERSION}.zip"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
TINY_NETWORK = {"filters": [4, 8, 8, 16, 16, 16], "sw_batch_size": 8}
TINY_SETTINGS = {"num_classes": 4, "in_channels": 1, "patch_size": [64, 64]}
URL = "https://example.org/weights/acdc17_rrw_model.pt"

# Runs in a fresh interpreter: drops the editable install of this project and every path inside the repository,
# checks that `common` cannot be imported, then runs the bundle from its folder (the cwd) as a user would.
ISOLATED_RUN = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    repo, images, predictions = sys.argv[1:4]
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    sys.path[:] = [os.getcwd()] + [p for p in sys.path if "__editable__" not in p and not p.startswith(repo)]
    sys.path_importer_cache.clear()
    report = {"common_importable": importlib.util.find_spec("common") is not None}
    from monai.bundle import ConfigParser, run
    import scripts
    report["scripts_file"] = scripts.__file__
    run(config_file="configs/inference.json", dataset_dir=images, output_dir=predictions, progress=False)
    train = ConfigParser()  # the training config's objects come from the vendored modules as well
    train.read_config("configs/train.json")
    report["train_objects"] = [type(train.get_parsed_content(key)).__name__ for key in ("loss", "optimizer")]
    report["loaded_common"] = sorted(name for name in sys.modules if name == "common" or name.startswith("common."))
    print("REPORT " + json.dumps(report))
    """
)


def load_export_script():
    spec = importlib.util.spec_from_file_location("export_bundle", REPO_ROOT / "scripts" / "export_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_network(settings: dict) -> torch.nn.Module:
    """The training config's network (deep supervision heads included), tiny."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update({**TINY_NETWORK, **settings})
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module")
def export_script():
    return load_export_script()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_network_weights(training_network(TINY_SETTINGS), path, TINY_SETTINGS)  # as a training run writes it
    return path


def tiny_settings_args() -> list[str]:
    return [f"--set={key}={json.dumps(value)}" for key, value in TINY_NETWORK.items()]


@pytest.fixture(scope="module")
def exported(export_script, tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    dist = tmp_path_factory.mktemp("dist")
    arguments = ["acdc17_rrw", str(dist), "--checkpoint", str(tiny_checkpoint), "--url", URL]
    assert export_script.main(arguments) == 2  # the full-size filters of the config do not fit the tiny weights
    assert not list(dist.iterdir())
    assert export_script.main([*arguments, *tiny_settings_args()]) == 0
    with zipfile.ZipFile(dist / ZIP_NAME) as archive:
        names = archive.namelist()
        archive.extractall(dist / "unzipped")
    return {"dist": dist, "bundle": dist / "unzipped" / "acdc17_rrw", "names": names}


def test_submission_layout_weights_outside_and_large_files(exported, tiny_checkpoint):
    dist, bundle, names = exported["dist"], exported["bundle"], exported["names"]
    written = sorted(path.name for path in dist.iterdir())
    assert written == sorted([ZIP_NAME, f"acdc17_rrw_v{VERSION}_model.pt", "unzipped"])
    assert all(name.startswith("acdc17_rrw/") for name in names)
    assert "acdc17_rrw/models/model.pt" not in names and "acdc17_rrw/bundle.yaml" not in names
    assert sorted(path.name for path in (bundle / "configs").iterdir()) == [
        "evaluate.json", "inference.json", "logging.conf", "metadata.json", "multi_gpu_train.json", "train.json",
    ]  # fmt: skip
    assert (dist / ZIP_NAME).stat().st_mode & 0o044 == 0o044  # readable by group and others (usual umask)

    weights = dist / f"acdc17_rrw_v{VERSION}_model.pt"
    large_files = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    assert large_files == [
        {"path": "models/model.pt", "url": URL, "hash_val": hashlib.sha256(weights.read_bytes()).hexdigest(),
         "hash_type": "sha256"}
    ]  # fmt: skip
    state = torch.load(weights, weights_only=True)
    expected = torch.load(tiny_checkpoint, weights_only=True)
    assert state.keys() == expected.keys() and all(torch.equal(state[key], expected[key]) for key in state)
    assert read_network_settings(weights) == TINY_SETTINGS


def test_vendored_modules_configs_and_pinned_public_packages(exported, schema_file):
    bundle = exported["bundle"]
    vendored = {path.relative_to(bundle / "scripts").as_posix() for path in (bundle / "scripts").rglob("*.py")}
    assert {
        "__init__.py",
        "training/__init__.py",
        "training/batches.py",
        "inference/workflow.py",
        "transforms.py",
        "networks/weights.py",
        "data/acdc.py",
        "prepare_acdc.py",
    } <= vendored
    # not needed by the configs or the ACDC preparation
    assert not {"evaluation/plots.py", "evaluation/statistics.py", "data/releases.py"} & vendored
    for path in [*(bundle / "scripts").rglob("*.py"), *(bundle / "configs").glob("*.json"), bundle / "docs/README.md"]:
        text = path.read_text()
        assert not re.search(r"(?<![\w.])common\.|from common\b|import common\b", text), path
        assert "generated by" not in text.lower(), path
    assert "generated" not in (bundle / "LICENSE").read_text().splitlines()[0].lower()

    inference = ConfigParser()
    inference.read_config(str(bundle / "configs" / "inference.json"))
    assert inference["filters"] == TINY_NETWORK["filters"] and inference["patch_size"] == TINY_SETTINGS["patch_size"]

    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    schema_keys = set(json.loads(schema_file.read_text())["properties"])
    assert set(metadata) <= schema_keys | {"name"} and "generated_by" not in metadata
    assert metadata["monai_version"] == importlib.metadata.version("monai")
    assert metadata["pytorch_version"] == importlib.metadata.version("torch").split("+")[0]
    assert metadata["numpy_version"] == np.__version__
    required = metadata["required_packages_version"]
    for distribution in ("nibabel", "edt", "pytorch-ignite", "scipy"):
        assert required[distribution] == importlib.metadata.version(distribution)
    assert "imbalance-seg-bundles" not in required and "monai" not in required


def test_readme_commands_use_only_the_bundles_files(exported):
    bundle = exported["bundle"]
    readme = (bundle / "docs" / "README.md").read_text()
    assert "bundles/acdc17_rrw" not in readme and "generated" not in readme.splitlines()[0]
    commands = [line for block in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL) for line in block.splitlines()]
    assert any(line.startswith("pip install monai==") for line in commands)
    assert "python -m scripts.prepare_acdc /data/ACDC/database" in "\n".join(commands)
    for line in commands:
        assert not re.search(r"scripts/\w+\.py|\.yaml\b", line), line  # repository scripts and configs
        for config in re.findall(r"configs/[\w.]+", line):
            assert (bundle / config).is_file(), line
    assert "large_files.yml" in readme
    assert "pip install -e" not in readme and "<!--" not in readme and "`common`" not in readme
    assert "python -m monai.bundle download_large_files" in commands
    assert any(line.startswith("python -m monai.bundle ckpt_export network_def") for line in commands)
    assert not re.search(r"\.ya?ml\b", readme.replace("large_files.yml", ""))  # the zip holds JSON configs
    for match in re.finditer(r"`((?:scripts|tests|common)/[\w*/.-]+\.py)`", readme):  # in the zip, or said not to be
        held = any(path.is_file() for path in bundle.glob(match.group(1)))
        assert held or readme[match.end() :].startswith(" of the project's repository"), match.group(1)
    assert "of the project's repository" in readme  # the RW docs name the repository's tests and tools


def test_readme_weights_and_torchscript_commands_run_from_the_unzipped_bundle(export_script, tiny_checkpoint, tmp_path):
    """download_large_files fetches the weights from large_files.yml; ckpt_export writes the TorchScript module."""
    dist = tmp_path / "dist"
    url = (dist / f"acdc17_rrw_v{VERSION}_model.pt").as_uri()  # where the weights file is written
    arguments = ["acdc17_rrw", str(dist), "--checkpoint", str(tiny_checkpoint), "--url", url, *tiny_settings_args()]
    assert export_script.main(arguments) == 0
    with zipfile.ZipFile(dist / ZIP_NAME) as archive:
        archive.extractall(tmp_path / "unzipped")
    bundle = tmp_path / "unzipped" / "acdc17_rrw"
    readme = (bundle / "docs" / "README.md").read_text()
    blocks = [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL)]
    wanted = ("python -m monai.bundle download_large_files", "python -m monai.bundle ckpt_export")
    commands = [line for block in blocks for line in block.splitlines() if line.startswith(wanted)]
    assert len(commands) == 2
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    for command in commands:
        arguments = [sys.executable, *shlex.split(command)[1:]]
        result = subprocess.run(arguments, cwd=bundle, env=environment, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, command + result.stderr[-3000:]
    assert (bundle / "models" / "model.pt").read_bytes() == (dist / f"acdc17_rrw_v{VERSION}_model.pt").read_bytes()
    module = torch.jit.load(str(bundle / "models" / "model.ts"))
    assert module(torch.zeros(1, 1, 64, 64)).shape == (1, 4, 64, 64)


def test_exported_bundle_runs_without_the_repository(exported, tmp_path):
    bundle = exported["bundle"]
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "models" / "model.pt").write_bytes((exported["dist"] / f"acdc17_rrw_v{VERSION}_model.pt").read_bytes())
    launcher = tmp_path / "isolated_run.py"
    launcher.write_text(ISOLATED_RUN)
    images, predictions = tmp_path / "images", tmp_path / "predictions"
    images.mkdir()
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    volume = np.random.default_rng(0).normal(size=(40, 36, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), images / "case.nii.gz")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, str(launcher), str(REPO_ROOT), str(images), str(predictions)]
    result = subprocess.run(command, cwd=bundle, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))[7:])
    assert report["common_importable"] is False and report["loaded_common"] == []
    assert Path(report["scripts_file"]) == bundle / "scripts" / "__init__.py"
    assert report["train_objects"][1] == "Adam"
    prediction = nib.load(predictions / "case.nii.gz")
    assert prediction.shape == (40, 36, 3)
    np.testing.assert_allclose(prediction.affine, affine)
    assert set(np.unique(np.asanyarray(prediction.dataobj))) <= {0, 1, 2, 3}


def test_inline_weights_settings_from_the_checkpoint_and_no_silent_overwrite(export_script, tmp_path):
    torch.manual_seed(1)
    three_classes = {**TINY_SETTINGS, "num_classes": 3}
    save_network_weights(training_network(three_classes), tmp_path / "three.pt", three_classes)
    arguments = ["acdc17_rrw", str(tmp_path / "dist"), "--checkpoint", str(tmp_path / "three.pt"), "--inline-weights"]
    assert export_script.main([*arguments, *tiny_settings_args()]) == 0
    archive_path = tmp_path / "dist" / ZIP_NAME
    with zipfile.ZipFile(archive_path) as archive:
        assert "acdc17_rrw/models/model.pt" in archive.namelist()
        assert "acdc17_rrw/large_files.yml" not in archive.namelist()
        inference = json.loads(archive.read("acdc17_rrw/configs/inference.json"))
        metadata = json.loads(archive.read("acdc17_rrw/configs/metadata.json"))
    assert inference["num_classes"] == 3  # taken from the checkpoint, no --set needed
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 3 and pred["channel_def"] == {"0": "background", "1": "class 1", "2": "class 2"}
    assert metadata["label_classes"].startswith("0 background, 1..2 the classes of the training datalist")
    assert metadata["pred_classes"].startswith("label map on the input grid with the values 0 (background) to 2")
    assert "logits" not in json.dumps(metadata) and "RV" not in metadata["pred_classes"]  # the 4-class spec's text

    before = archive_path.read_bytes()
    assert export_script.main([*arguments, *tiny_settings_args()]) == 2  # exists: kept as it was
    assert archive_path.read_bytes() == before
    with pytest.raises(ValueError, match=r"three\.pt .*num_classes: 3 in the checkpoint, 4 in the config"):
        export_script.export_bundle(
            "acdc17_rrw", tmp_path / "other", checkpoint=tmp_path / "three.pt", inline_weights=True,
            settings={**TINY_NETWORK, "num_classes": 4},
        )  # fmt: skip
    assert export_script.main([*arguments, *tiny_settings_args(), "--overwrite"]) == 0
    assert sorted(path.name for path in (tmp_path / "dist").iterdir()) == [ZIP_NAME]  # no partial files left


@pytest.mark.parametrize("name", ["../acdc17_rrw", "acdc17_rrw/../acdc17_rrw", "/tmp/acdc17_rrw", "..", "a\\b", ""])
def test_bundle_names_with_path_parts_are_refused_by_name(export_script, tiny_checkpoint, tmp_path, name):
    with pytest.raises(ValueError, match=rf"bundle name {re.escape(repr(name))}: not a bundle folder name"):
        export_script.export_bundle(name, tmp_path / "dist", checkpoint=tiny_checkpoint, inline_weights=True)
    assert not (tmp_path / "dist").exists()


CODE_SETTINGS = [
    "filters=$__import__('os').system('id')",
    "sw_batch_size= $1 + 1",
    "filters='%other.yaml#filters'",
    "filters=%other.yaml#filters",
    "device='@other'",
    "filters=[4, '$exit()']",
    "device={_target_: os.system, command: id}",
    "device={nested: {_requires_: '@x'}}",
]


def test_set_refuses_code_unless_allowed(export_script, tmp_path, capsys):
    """The one settings checker (common.data.settings) at export: refused with one line naming the option."""
    for item in CODE_SETTINGS:
        assert export_script.main(["acdc17_rrw", str(tmp_path), "--set", item]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith("(--allow-expressions allows it)")
        key = item.partition("=")[0]
        assert key in export_script.parse_settings([item], allow_code=True)
    assert not any(tmp_path.iterdir())


def test_set_accepts_plain_data(export_script, capsys):
    settings = export_script.parse_settings(["filters=[4, 8]", "name=plain $ text", "x=null"])
    assert settings == {"filters": [4, 8], "name": "plain $ text", "x": None}
    for bad in ("filters", "=3"):
        with pytest.raises(ValueError, match="expected KEY=VALUE"):
            export_script.parse_settings([bad])
    for bad in ("a.b=1", "../x=1"):
        with pytest.raises(ValueError, match="is not a setting name"):
            export_script.parse_settings([bad])
    with pytest.raises(SystemExit):
        export_script.main(["--help"])
    help_text = capsys.readouterr().out
    assert "--allow-expressions" in help_text and "refused" in help_text


def test_export_refuses_unknown_settings_foreign_checkpoints_and_missing_url(export_script, tiny_checkpoint, tmp_path):
    checkpoint = tmp_path / "other.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, checkpoint)
    common = {"checkpoint": checkpoint, "inline_weights": True}
    with pytest.raises(ValueError, match=r"other\.pt: does not fit the network DeepSupervisionDynUNet"):
        export_script.export_bundle("acdc17_rrw", tmp_path / "dist", **common)
    with pytest.raises(ValueError, match="no_such_key"):
        export_script.export_bundle("acdc17_rrw", tmp_path / "dist", settings={"no_such_key": 1}, **common)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pt: cannot read"):
        export_script.export_bundle(
            "acdc17_rrw", tmp_path / "dist", checkpoint=tmp_path / "notes.pt", inline_weights=True
        )
    with pytest.raises(ValueError, match="--url"):
        export_script.export_bundle("acdc17_rrw", tmp_path / "dist", checkpoint=tiny_checkpoint)
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_a_zip_written_meanwhile_is_kept_and_named(export_script, tmp_path):
    staged = tmp_path / "staged" / "bundle"
    staged.mkdir(parents=True)
    (staged / "notes.txt").write_text("bundle file")
    output = tmp_path / "bundle.zip"
    output.write_text("someone else's zip")  # appears after export_bundle's own check, before the zip is done
    with pytest.raises(FileExistsError, match=r"bundle\.zip: already exists; pass --overwrite"):
        export_script.write_zip(staged, output, overwrite=False)
    assert output.read_text() == "someone else's zip" and sorted(p.name for p in tmp_path.iterdir()) == [
        "bundle.zip",
        "staged",
    ]
    export_script.write_zip(staged, output, overwrite=True)
    with zipfile.ZipFile(output) as archive:
        assert archive.namelist() == ["bundle/notes.txt"]
    assert output.stat().st_mode & 0o644 == 0o644  # a normal file's mode, not the temporary file's 0600
