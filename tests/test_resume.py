"""Resumable training (common.training.resume): a run killed mid-epoch and resumed ends like an uninterrupted one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.networks.nets import DynUNet

from common.networks.weights import (
    FinalWeightsSaver,
    NetworkWeightsLoader,
    keep_pretrained_weights,
    load_network_weights,
    network_settings_of,
    read_network_settings,
    save_network_weights,
    trained_settings,
)
from common.training.resume import AtomicCheckpointSaver, ResumableTraining, epoch_seed, load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "bundles" / "acdc17_boundary" / "configs" / "train.yaml"  # Dice + RW-Boundary, gradual alpha
OVERLAYS = REPO_ROOT / "tests" / "configs"
CONFIGS = [str(TRAIN)]
TINY_NETWORK = {"patch_size": [64, 64], "filters": [4, 8, 8, 16, 16, 16], "sw_batch_size": 8}
EPOCHS = 3
ITERATIONS_PER_EPOCH = 2


@pytest.fixture(scope="module")
def dataset_dir(prepared_acdc_release) -> Path:
    return prepared_acdc_release


def settings(dataset_dir: Path, bundle_root: Path) -> dict:
    return {
        **TINY_NETWORK,
        "dataset_dir": str(dataset_dir),
        "bundle_root": str(bundle_root),
        "epochs": EPOCHS,
        "samples_per_volume": 2,
        "num_workers": 0,
        "seed": 1,
        "iterations_per_epoch": ITERATIONS_PER_EPOCH,  # alpha = 1 - 0.01 * epoch index
    }


def train_in_process(overrides: dict) -> ConfigParser:
    """Run the merged configs like ``monai.bundle run`` and return the parser (its objects stay inspectable)."""
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update(overrides)
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    return parser


@pytest.fixture(scope="module")
def uninterrupted(dataset_dir, tmp_path_factory) -> tuple[Path, ConfigParser]:
    root = tmp_path_factory.mktemp("uninterrupted")
    return root, train_in_process(settings(dataset_dir, root))


@pytest.fixture(scope="module")
def resumed(dataset_dir, tmp_path_factory) -> tuple[Path, ConfigParser, dict]:
    root = tmp_path_factory.mktemp("interrupted")
    overrides = settings(dataset_dir, root)
    kill_at = 2 * ITERATIONS_PER_EPOCH + 1  # in the middle of epoch 3
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str([*CONFIGS, str(OVERLAYS / "kill_mid_epoch.yaml")]), "--kill_at_iteration", str(kill_at),
        *[item for key, value in overrides.items() for item in (f"--{key}", json.dumps(value))],
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-3000:]  # SIGKILL: no handler ran after the kill
    at_kill = torch.load(root / "models" / "checkpoint.pt", weights_only=True)
    return root, train_in_process({**overrides, "resume": True}), at_kill


def test_the_killed_run_left_the_checkpoint_of_its_last_complete_epoch(resumed):
    _, _, at_kill = resumed
    assert at_kill["trainer"]["iteration"] == 2 * ITERATIONS_PER_EPOCH
    assert at_kill["lr_scheduler"]["last_epoch"] == 2
    assert [row["epoch"] for row in at_kill["metrics_table"]["rows"]] == [1, 2]


def test_resumed_training_reaches_the_uninterrupted_state(uninterrupted, resumed):
    (plain_root, plain), (resumed_root, resumed_parser, _) = uninterrupted, resumed
    expected = torch.load(plain_root / "models" / "checkpoint.pt", weights_only=True)
    actual = torch.load(resumed_root / "models" / "checkpoint.pt", weights_only=True)
    assert actual["trainer"] == expected["trainer"]
    assert actual["trainer"]["iteration"] == EPOCHS * ITERATIONS_PER_EPOCH
    for trainer in (plain, resumed_parser):
        assert trainer.get_parsed_content("train#trainer").state.epoch == EPOCHS
    assert actual["model"].keys() == expected["model"].keys()
    for key, value in expected["model"].items():
        torch.testing.assert_close(actual["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for index, state in expected["optimizer"]["state"].items():
        torch.testing.assert_close(actual["optimizer"]["state"][index]["exp_avg"], state["exp_avg"])
        assert int(actual["optimizer"]["state"][index]["step"]) == int(state["step"]) == EPOCHS * 2
    assert actual["lr_scheduler"] == expected["lr_scheduler"]
    assert actual["lr_scheduler"]["last_epoch"] == EPOCHS
    # the alpha schedule is a function of the restored epoch: 1 - 2 * 0.01 in epoch 3, in both runs
    for parser in (plain, resumed_parser):
        assert parser.get_parsed_content("loss#loss").alpha == pytest.approx(0.98)
    # validation metrics of every epoch, the resumed part appended to the restored rows
    assert [row["epoch"] for row in actual["metrics_table"]["rows"]] == [1, 2, 3]
    # row by row: approx compares flat mappings only; weights agree to 1e-5, so the metrics to 1e-4
    for actual_row, expected_row in zip(
        actual["metrics_table"]["rows"], expected["metrics_table"]["rows"], strict=True
    ):
        assert actual_row == pytest.approx(expected_row, rel=1e-4, nan_ok=True)
    assert actual["best_model_saver"] == expected["best_model_saver"]
    plain_csv = (plain_root / "eval" / "validation_metrics.csv").read_text().splitlines()
    resumed_csv = (resumed_root / "eval" / "validation_metrics.csv").read_text().splitlines()
    assert len(resumed_csv) == len(plain_csv) == 1 + EPOCHS
    # models/model.pt: the final weights (bare state dict) with the network settings, equal after the resume
    final_plain = torch.load(plain_root / "models" / "model.pt", weights_only=True)
    final_resumed = torch.load(resumed_root / "models" / "model.pt", weights_only=True)
    assert final_plain.keys() == final_resumed.keys() == expected["model"].keys()  # every weight, heads included
    for key, value in final_plain.items():
        torch.testing.assert_close(value, expected["model"][key])
        torch.testing.assert_close(final_resumed[key], expected["model"][key], rtol=1e-5, atol=1e-6)
    settings = {"num_classes": 4, "in_channels": 1, "patch_size": TINY_NETWORK["patch_size"]}
    assert network_settings_of(final_plain) == network_settings_of(final_resumed) == settings
    # one training state file, no duplicate final checkpoint, no best-model file without a selection split
    assert sorted(path.name for path in (resumed_root / "models").iterdir()) == ["checkpoint.pt", "model.pt"]


def test_a_finished_run_is_not_replaced_without_resume(uninterrupted):
    root, _ = uninterrupted
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update(settings(Path("unused"), root))
    with pytest.raises(RuntimeError) as error_info:  # monai.bundle wraps errors of config expressions
        parser.get_parsed_content("keep_earlier_results")
    assert isinstance(error_info.value.__cause__, FileExistsError)
    assert "checkpoint.pt: already exists" in str(error_info.value.__cause__)


def tiny_dynunet(filters: list[int], deep_supervision: bool = False) -> DynUNet:
    return DynUNet(2, 1, 4, [3] * 3, [1, 2, 2], [2, 2], filters=filters, deep_supervision=deep_supervision)


def test_a_checkpoint_of_another_network_fails_naming_the_file(tmp_path):
    engine = Engine(lambda engine, batch: None)
    writer = ResumableTraining(tmp_path / "last.pt", {"model": tiny_dynunet([4, 8, 16])})
    engine.state.max_epochs, engine.state.epoch_length = 1, 1
    writer.save(engine)
    other = ResumableTraining(tmp_path / "last.pt", {"model": tiny_dynunet([4, 8, 32])}, resume=True)
    with pytest.raises(ValueError, match=r"last\.pt: its 'model' does not fit this training \(Error"):
        other.load(engine)
    network = tiny_dynunet([4, 8, 16])
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"last\.pt: has no \['optimizer'\] entries"):
        load_checkpoint(tmp_path / "last.pt", {"model": network, "optimizer": optimizer})
    (tmp_path / "cut.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut\.pt: cannot read as a weights-only PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pt", {"model": tiny_dynunet([4, 8, 16])})
    torch.save({"model": {"weight": torch.ones(1)}, "code": Engine}, tmp_path / "pickled.pt")  # not plain data
    with pytest.raises(ValueError, match=r"pickled\.pt: cannot read"):
        load_checkpoint(tmp_path / "pickled.pt", {"model": tiny_dynunet([4, 8, 16])})


def test_checkpoint_savers_write_atomically(tmp_path, monkeypatch):
    network = tiny_dynunet([4, 8, 16])
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": network}, save_final=True, final_filename="final.pt"
    )
    engine = Engine(lambda engine, batch: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    before = (tmp_path / "final.pt").read_bytes()
    assert (tmp_path / "final.pt").stat().st_mode & 0o044 == 0o044  # readable by group and others

    def failing_save(obj, file, *args, **kwargs):
        if isinstance(file, str | os.PathLike):
            Path(file).write_bytes(b"half a checkpoint")
        else:
            file.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        engine.run([0], max_epochs=2)  # a later final iteration: the saver replaces final.pt
    with pytest.raises(OSError, match="No space left"):
        ResumableTraining(tmp_path / "final.pt", {"model": network}).save(engine)
    assert (tmp_path / "final.pt").read_bytes() == before  # the earlier file is intact
    assert sorted(path.name for path in tmp_path.iterdir()) == ["final.pt"]  # no temporary file left


def test_epoch_seeds_differ_by_epoch_and_rank_and_reseed_the_data(tmp_path):
    seeds = {epoch_seed(1, epoch, rank) for epoch in range(4) for rank in range(2)}
    assert len(seeds) == 8 and epoch_seed(1, 2, 0) == epoch_seed(1, 2, 0)
    drawn = []
    engine = Engine(lambda engine, batch: drawn.append(torch.rand(1).item()))
    ResumableTraining(tmp_path / "last.pt", {}, seed=3).attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda engine: torch.rand(int(engine.state.epoch)))
    engine.run([0], max_epochs=2)
    torch.manual_seed(epoch_seed(3, 2, 0))
    torch.rand(2)
    assert drawn[1] == torch.rand(1).item()


def test_a_damaged_training_state_under_resume_names_the_file(tmp_path):
    engine = Engine(lambda engine, batch: None)
    engine.state.max_epochs, engine.state.epoch_length = 2, 1
    network = tiny_dynunet([4, 8, 16])
    damaged = {
        "empty.pt": {},
        "no_trainer.pt": {"model": network.state_dict()},
        "bad_trainer.pt": {"model": network.state_dict(), "trainer": {"epoch": 1}},
        "weights_only.pt": network.state_dict(),
        "list.pt": [1, 2],
    }
    for name, content in damaged.items():
        torch.save(content, tmp_path / name)
        resumer = ResumableTraining(tmp_path / name, {"model": network}, resume=True)
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: "):
            resumer.load(engine)


def test_final_weights_carry_the_heads_and_settings_and_load_strictly(tmp_path):
    torch.manual_seed(0)
    training = tiny_dynunet([4, 8, 16], deep_supervision=True)
    settings = {"num_classes": 4, "in_channels": 1, "patch_size": (64, 64), "target_spacing": [1.25, 1.25, -1]}
    engine = Engine(lambda engine, batch: None)
    FinalWeightsSaver(training, tmp_path / "models" / "model.pt", settings).attach(engine)
    engine.run([0], max_epochs=1)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state.keys() == training.state_dict().keys()  # every weight, the heads (and their aliases) included
    expected_settings = {**settings, "patch_size": [64, 64]}
    assert read_network_settings(tmp_path / "models" / "model.pt") == expected_settings

    torch.manual_seed(1)
    inference = tiny_dynunet([4, 8, 16], deep_supervision=True)  # as the inference configs build it
    evaluator = Engine(lambda engine, batch: None)
    NetworkWeightsLoader(tmp_path / "models" / "model.pt", inference, {"num_classes": 4}).attach(evaluator)
    evaluator.run([0], max_epochs=1)
    for key, value in training.state_dict().items():  # every weight from the file, the heads included
        assert torch.equal(inference.state_dict()[key], value), key

    headless = {key: value for key, value in state.items() if not re.search("deep_supervision_heads|super_head", key)}
    torch.save(headless, tmp_path / "headless.pt")
    missing_heads = r"headless\.pt: does not fit .*missing in the checkpoint: \S*(super_head|supervision_heads)"
    with pytest.raises(ValueError, match=missing_heads):  # heads left at random would pass unnoticed: refused
        load_network_weights(inference, tmp_path / "headless.pt")
    with pytest.raises(ValueError, match=r"model\.pt: does not fit .*in the checkpoint, not in the network: \S*head"):
        load_network_weights(tiny_dynunet([4, 8, 16]), tmp_path / "models" / "model.pt")  # a network without heads
    with pytest.raises(ValueError, match=r"model\.pt: .*num_classes: 4 in the checkpoint, 3 in the config"):
        load_network_weights(inference, tmp_path / "models" / "model.pt", {"num_classes": 3})
    shapes = r"model\.pt: does not fit the network DynUNet \(other shapes: .* \(16, 8, 3, 3\) in the checkpoint, \(32"
    with pytest.raises(ValueError, match=shapes):
        load_network_weights(tiny_dynunet([4, 8, 32], deep_supervision=True), tmp_path / "models" / "model.pt")
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1))
    save_network_weights(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: does not fit .*not in the network: 0\.weight, 0\.bias"):
        load_network_weights(tiny_dynunet([4, 8, 16]), tmp_path / "other.pt")
    assert read_network_settings(tmp_path / "other.pt") == {}


def test_trained_settings_prefer_the_weights_and_fall_back_to_the_defaults(tmp_path):
    defaults = {"num_classes": 2, "label_values": None, "class_names": None}
    assert trained_settings(tmp_path / "models" / "model.pt", defaults) == defaults  # not trained yet
    network = torch.nn.Conv2d(1, 3, 1)
    save_network_weights(network, tmp_path / "plain.pt")  # weights saved without label settings
    assert trained_settings(tmp_path / "plain.pt", defaults) == defaults
    stored = {"num_classes": 3, "label_values": [0, 27, 40], "class_names": ["aorta", "kidney"]}
    save_network_weights(network, tmp_path / "model.pt", {**stored, "slice_axis": 2})
    assert trained_settings(tmp_path / "model.pt", defaults) == {**stored, "slice_axis": 2}
    assert trained_settings(tmp_path / "model.pt") == {**stored, "slice_axis": 2}
    (tmp_path / "foreign.pt").write_text("not weights")
    with pytest.raises(ValueError, match=r"foreign\.pt: cannot read"):
        trained_settings(tmp_path / "foreign.pt", defaults)


def test_msd_training_stores_the_datalists_label_values_and_names(tmp_path):
    """A plain dataset.json (release values 0, 27, 40) gives the settings stored with the final weights."""
    labels = {"0": "background", "27": "aorta", "40": "kidney"}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels, "training": [], "validation": []}))
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / "msd_rrw" / "configs" / "train.yaml"))
    parser.update({"datalist": str(tmp_path / "dataset.json")})
    parser.get_parsed_content("imports")
    settings = parser.get_parsed_content("network_settings")
    assert settings["num_classes"] == 3
    assert settings["label_values"] == [0, 27, 40]
    assert settings["class_names"] == ["aorta", "kidney"]
    assert settings["slice_axis"] == 2 and settings["in_plane_spacing"] == 1.0


def test_shipped_weights_are_kept_and_trained_from(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(0)
    shipped = tiny_dynunet([4, 8, 16])
    save_network_weights(shipped, models / "model.pt", {"num_classes": 4})
    shipped_bytes = (models / "model.pt").read_bytes()
    network = tiny_dynunet([4, 8, 16])
    start = keep_pretrained_weights(network, models / "model.pt", models / "model_pretrained.pt", {"num_classes": 4})
    assert start == models / "model_pretrained.pt" and start.read_bytes() == shipped_bytes
    assert (models / "model.pt").read_bytes() == shipped_bytes  # the input is copied, never changed
    for key, value in network.state_dict().items():
        assert torch.equal(value, shipped.state_dict()[key])

    save_network_weights(tiny_dynunet([4, 8, 16]), models / "model.pt")  # the run's final weights replace model.pt
    again = tiny_dynunet([4, 8, 16])  # a second run starts from the kept weights again, which stay as they were
    keep_pretrained_weights(again, models / "model.pt", models / "model_pretrained.pt")
    assert (models / "model_pretrained.pt").read_bytes() == shipped_bytes
    assert all(torch.equal(value, shipped.state_dict()[key]) for key, value in again.state_dict().items())

    scratch = tiny_dynunet([4, 8, 16])
    before = {key: value.clone() for key, value in scratch.state_dict().items()}
    assert keep_pretrained_weights(scratch, models / "model.pt", models / "model_pretrained.pt", finetune=False) is None
    assert all(torch.equal(value, before[key]) for key, value in scratch.state_dict().items())
    with pytest.raises(ValueError, match=r"model_pretrained\.pt: trained with other network settings"):
        keep_pretrained_weights(scratch, models / "model.pt", models / "model_pretrained.pt", {"num_classes": 3})
    with pytest.raises(TypeError, match="finetune must be True or False"):
        keep_pretrained_weights(scratch, models / "model.pt", models / "model_pretrained.pt", finetune="yes")

    fresh = tmp_path / "fresh"  # --overwrite True starts over: nothing is kept, the network stays random
    fresh.mkdir()
    (fresh / "model.pt").write_bytes(shipped_bytes)
    assert keep_pretrained_weights(scratch, fresh / "model.pt", fresh / "model_pretrained.pt", overwrite=True) is None
    assert not (fresh / "model_pretrained.pt").exists()


def test_a_bundle_that_ships_weights_fine_tunes_without_overwrite(uninterrupted, dataset_dir, tmp_path):
    plain_root, _ = uninterrupted
    (tmp_path / "models").mkdir()
    shipped_bytes = (plain_root / "models" / "model.pt").read_bytes()
    (tmp_path / "models" / "model.pt").write_bytes(shipped_bytes)  # a downloaded bundle: weights and nothing else
    shipped = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update({**settings(dataset_dir, tmp_path), "epochs": 1})
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("keep_earlier_results")  # the first step of run (resolved once)
    started = parser.get_parsed_content("network").state_dict()
    assert all(torch.equal(started[key], value) for key, value in shipped.items())  # fine-tuning starts from them
    parser.get_parsed_content("run")
    assert (tmp_path / "models" / "model_pretrained.pt").read_bytes() == shipped_bytes
    final = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not all(torch.equal(final[key], value) for key, value in shipped.items())  # the fine-tuned weights
