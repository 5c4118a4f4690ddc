"""Every bundle's configs are standard MONAI workflows: ``check_properties()`` finds nothing missing or misnamed.

As the model zoo's unit tests check them: ``train.yaml`` as a train workflow, ``train.yaml`` + ``evaluate.yaml`` as
a train workflow too (evaluate.yaml overrides the validation part of train.yaml), and ``inference.yaml`` as an infer
workflow with its shipped defaults (the default input folder need not exist: the run plans the folder). The required
properties are instantiated, so each train workflow reads a small datalist (files never loaded: ``cache_rate`` 0) and
builds a narrowed network (same depth, fewer channels).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from ignite.metrics import Average
from monai.bundle import ConfigParser, ConfigWorkflow, run

pytestmark = pytest.mark.filterwarnings(
    "ignore:parsing config_file:UserWarning",
    "ignore:Default upsampling",
    "error::FutureWarning",  # a default that MONAI is changing (Orientationd's labels): the configs pass it
)

REPO = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO / "bundles"
ALL_BUNDLES = sorted(path.parent.name for path in BUNDLES_DIR.glob("*/bundle.yaml"))
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def datalist_folder(tmp_path_factory) -> Path:
    """A datalist with every optional field the bundles read; its image and label files are never opened."""
    folder = tmp_path_factory.mktemp("datalist")
    entries = [{"image": f"case{index}_image.nii.gz", "label": f"case{index}_label.nii.gz"} for index in range(2)]
    datalist = {
        "training": entries[:1],
        "validation": entries[1:],
        "num_classes": NUM_CLASSES,
        "labels": {str(value): f"class{value}" for value in range(NUM_CLASSES)},
        "label_mapping": {"orig_labels": list(range(NUM_CLASSES)), "target_labels": list(range(NUM_CLASSES))},
    }
    (folder / "datalist.json").write_text(json.dumps(datalist))
    return folder


def narrowed_network(config_file: Path) -> dict[str, list[int]]:
    """Overrides that keep the network's depth but give each level 2-8 channels."""
    parser = ConfigParser()
    parser.read_config(str(config_file))
    keys = [key for key in ("filters", "channels") if key in parser]
    return {key: [min(8, 2 << level) for level in range(len(parser[key]))] for key in keys}


def workflow(name: str, parts: tuple[str, ...], folder: Path, bundle_root: Path) -> ConfigWorkflow:
    configs = BUNDLES_DIR / name / "configs"
    overrides = {
        **narrowed_network(configs / "train.yaml"),
        "bundle_root": str(bundle_root),
        "dataset_dir": str(folder),
        "cache_rate": 0.0,
        "num_workers": 0,
        "label_weights": None,  # exp-log bundles compute it from the label files
        "num_classes": NUM_CLASSES,
        "class_names": [f"class{value}" for value in range(1, NUM_CLASSES)],
        "in_channels": 1,
        "device": "$torch.device('cpu')",
    }
    return ConfigWorkflow(
        config_file=[str(configs / f"{part}.yaml") for part in parts],
        meta_file=str(configs / "metadata.json"),
        logging_file=None,
        workflow_type="train",
        **overrides,
    )


@pytest.mark.parametrize("name", ALL_BUNDLES)
@pytest.mark.parametrize("parts", [("train",), ("train", "evaluate")], ids=["train", "evaluate"])
def test_configs_are_standard_monai_train_workflows(name, parts, datalist_folder, tmp_path, caplog):
    bundle = workflow(name, parts, datalist_folder, tmp_path)
    bundle.initialize()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert bundle.check_properties() == []  # required properties
    assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]  # optional
    assert bundle.trainer.state.key_metric_name == "train_loss"  # the epoch's mean loss, printed by StatsHandler
    assert isinstance(bundle.parser.get_parsed_content("train#key_metric")["train_loss"], Average)
    assert bundle.max_epochs == bundle.parser.get_parsed_content("epochs")


def test_training_prints_the_mean_loss_of_every_epoch_and_no_iteration_lines(prepared_acdc_release, tmp_path, caplog):
    configs = BUNDLES_DIR / "acdc17_rrw" / "configs"
    overrides = {"patch_size": [64, 64], "filters": [4, 8, 8, 16, 16, 16], "samples_per_volume": 2, "epochs": 2}
    overrides["iterations_per_epoch"] = 3  # the bundle's nnU-Net epoch is 250 iterations
    console = logging.getLogger("monai.handlers.StatsHandler")  # MONAI gives it its own stdout handler
    console.addHandler(caplog.handler)
    try:
        run(  # with the bundle's logging.conf, as the README's command
            config_file=str(configs / "train.yaml"),
            logging_file=str(configs / "logging.conf"),
            dataset_dir=str(prepared_acdc_release),
            bundle_root=str(tmp_path),
            num_workers=0,
            **overrides,
        )
    finally:
        console.removeHandler(caplog.handler)
    messages = [record.getMessage() for record in caplog.records if record.name == console.name]
    losses = [message for message in messages if "Metrics -- train_loss: " in message]
    assert [message.split(" Metrics")[0] for message in losses] == ["Epoch[1]", "Epoch[2]"]
    assert all(float(message.split("train_loss: ")[1].split()[0]) > 0 for message in losses)
    assert not [message for message in messages if ", Iter: " in message]  # per-iteration lines


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_inference_configs_are_monai_infer_workflows_with_their_shipped_defaults(name, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # bundle_root '.': no weights, no data, the default folders do not exist
    configs = BUNDLES_DIR / name / "configs"
    bundle = ConfigWorkflow(
        config_file=str(configs / "inference.yaml"),
        meta_file=str(configs / "metadata.json"),
        logging_file=None,
        workflow_type="infer",
    )
    bundle.initialize()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert bundle.check_properties() == []  # required properties, all instantiated
    assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]  # optional
    assert not Path(bundle.parser.get_parsed_content("dataset_dir")).exists() and len(bundle.dataset) == 0
    assert not list(tmp_path.iterdir())  # nothing written by initialising
