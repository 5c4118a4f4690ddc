"""Hostile runs end with one line and exit status 2, and resumed runs equal uninterrupted ones (issue 21)."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from torch.utils.data import DataLoader

from common.errors import (
    EXIT_USER_ERROR,
    CheckpointError,
    OptionValueError,
    UserError,
    ensure_absent,
    error_line,
    exit_status,
)
from common.networks.weights import (
    keep_pretrained_weights,
    load_network_weights,
    read_network_state,
    save_network_weights,
)
from common.training.resume import ResumableTraining

REPO_ROOT = Path(__file__).resolve().parents[1]
MSD_RRW = REPO_ROOT / "bundles" / "msd_rrw" / "configs"


def run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


# --- resume: the data pass of an epoch depends on (seed, epoch) only -------------------------------------------------


def train(bundle_root: Path, epochs: int, resume: bool) -> torch.nn.Module:
    """Epochs of 3 iterations over a shuffled loader of 2 batches, with random noise in each step."""
    torch.manual_seed(0)
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    data = [torch.tensor([float(i), float(i * i % 5)]) for i in range(4)]
    loader = DataLoader(data, batch_size=2, shuffle=True)  # length 2

    def step(engine: Engine, batch: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = (network(batch + 0.01 * torch.randn_like(batch)) ** 2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    engine = Engine(step)
    ResumableTraining(
        bundle_root / "checkpoint.pt", {"model": network, "optimizer": optimizer}, seed=3, resume=resume
    ).attach(engine)
    engine.run(loader, max_epochs=epochs, epoch_length=3)
    return network


def test_a_resumed_run_equals_an_uninterrupted_one_when_epochs_span_loader_passes(tmp_path):
    uninterrupted = train(tmp_path / "a", epochs=2, resume=False)
    train(tmp_path / "b", epochs=1, resume=False)  # stopped after epoch 1
    resumed = train(tmp_path / "b", epochs=2, resume=True)
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert not torch.equal(uninterrupted.weight, train(tmp_path / "c", epochs=1, resume=False).weight)


def test_a_resume_asking_for_fewer_epochs_than_done_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    train(tmp_path / "a", epochs=2, resume=False)
    before = (tmp_path / "a" / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError) as caught:
        train(tmp_path / "a", epochs=1, resume=True)
    assert "holds 2 epochs" in str(caught.value) and "--epochs 2" in str(caught.value)
    assert exit_status(caught.value) == EXIT_USER_ERROR and "\n" not in error_line(caught.value)
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == before


# --- checkpoints: truncated, malicious, of another network -----------------------------------------------------------


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_truncated_malicious_and_foreign_checkpoints_end_with_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 2, 1))
    good = save_network_weights(network, tmp_path / "model.pt", {"num_classes": 2})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    malicious = tmp_path / "malicious.pt"
    malicious.write_bytes(pickle.dumps({"weight": RunsCode()}))
    foreign = save_network_weights(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3)), tmp_path / "other.pt")
    for path, expected in ((truncated, "cannot read"), (malicious, "cannot read"), (foreign, "does not fit")):
        with pytest.raises(CheckpointError) as caught:
            load_network_weights(network, path)
        line = error_line(caught.value)
        assert line.startswith(f"error: {path}: {expected}") and "\n" not in line
        assert exit_status(caught.value) == EXIT_USER_ERROR
    assert not (tmp_path / "pwned.txt").exists()  # weights_only: the pickle's code never ran
    with pytest.raises(CheckpointError) as caught:
        load_network_weights(network, foreign)
    assert "0.weight (8, 1, 3, 3) in the checkpoint, (4, 1, 3, 3) in the network" in str(caught.value)
    assert "missing in the checkpoint: 1.weight, 1.bias" in str(caught.value)


def test_weights_of_another_data_set_in_the_bundle_folder_name_the_options_that_fix_it(tmp_path):
    network = torch.nn.Conv2d(1, 3, 1)
    save_network_weights(network, tmp_path / "model.pt", {"num_classes": 3, "label_values": [0, 1, 2]})
    with pytest.raises(CheckpointError) as caught:  # training on a second data set in the same --bundle_root
        keep_pretrained_weights(
            network, tmp_path / "model.pt", tmp_path / "model_pretrained.pt", {"num_classes": 2, "label_values": [0, 5]}
        )
    message = error_line(caught.value)
    assert "num_classes: 3 in the checkpoint, 2 in the config" in message
    assert "another --bundle_root" in message and "--finetune False" in message and "--overwrite True" in message
    with pytest.raises(UserError, match="--resume True.*--overwrite True.*another --bundle_root"):
        ensure_absent(tmp_path / "model.pt", fix=ParserFix.text)


class ParserFix:
    """The fix train.yaml's keep_earlier_results names (read from the generated config)."""

    text = " ".join((MSD_RRW / "train.yaml").read_text().split("fix='", 1)[1].split("')", 1)[0].split())


# --- evaluation takes the trained network's settings from models/model.pt --------------------------------------------


def test_evaluation_reads_filters_and_patch_size_from_the_weights(tmp_path):
    trained = {"filters": [4, 8, 8, 16, 16, 16], "patch_size": [64, 64], "in_plane_spacing": 2.0}
    parser = ConfigParser()
    parser.read_config([str(MSD_RRW / "train.yaml")])
    parser.update({"bundle_root": str(tmp_path), **trained})
    parser.update({"num_classes": 3, "class_names": ["a", "b"], "label_values": [0, 1, 2], "slice_axis": 2})
    network = parser.get_parsed_content("network_def")
    save_network_weights(network, tmp_path / "models" / "model.pt", parser.get_parsed_content("network_settings"))

    parser = ConfigParser()  # the evaluation: no --filters, --patch_size, --in_plane_spacing given again
    parser.read_config([str(MSD_RRW / "train.yaml"), str(MSD_RRW / "evaluate.yaml")])
    parser.update({"bundle_root": str(tmp_path), "device": "$torch.device('cpu')"})
    parser.update({"num_classes": 3, "class_names": ["a", "b"], "label_values": [0, 1, 2], "slice_axis": 2})
    for key, value in trained.items():
        assert parser.get_parsed_content(key) == value, key
    assert parser.get_parsed_content("validate#inferer").roi_size == [64, 64]
    loaded = load_network_weights(
        parser.get_parsed_content("network"),
        tmp_path / "models" / "model.pt",
        parser.get_parsed_content("network_settings"),
    )
    state = read_network_state(tmp_path / "models" / "model.pt")
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in state.items())


# --- the error hook: one line, status 2, never SIGABRT ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("RecursionError('maximum recursion depth exceeded')", "error: a value is nested too deeply"),
        ("OSError(errno.EROFS, 'Read-only file system', '/data/out/eval')", "error: /data/out/eval: Read-only"),
        ("PermissionError(errno.EACCES, 'Permission denied', '/data/out/x.csv')", "(in the folder /data/out)"),
        (
            "OptionValueError('--output_dir in: is the input folder (--dataset_dir); choose another output folder')",
            "error: --",
        ),
        (
            "ValueError('the referring item `@validate#evaluator` is not defined in the config content.')",
            "error: the config refers to @validate#evaluator",
        ),
    ],
)
def test_errors_of_the_users_making_get_one_line_and_status_2(error, expected):
    made = eval(error, {"errno": errno, "OptionValueError": OptionValueError})  # noqa: S307 (test parameters)
    wrapped = RuntimeError("Failed to evaluate ConfigExpression: \n'$f()'")
    wrapped.__cause__ = made
    assert expected in error_line(wrapped) and "\n" not in error_line(wrapped)
    assert exit_status(wrapped) == EXIT_USER_ERROR


def test_a_refusal_while_worker_threads_run_exits_2_not_sigabrt():
    result = run_python(
        """
        import threading, time, torch
        import common.error_hook
        from common.errors import UserError
        stop = threading.Event()
        def work():
            while True:
                torch.ones(64, 64) @ torch.ones(64, 64)
        for _ in range(4):
            threading.Thread(target=work, daemon=True).start()
        time.sleep(0.2)
        raise UserError('--output_dir out: refused')
        """
    )
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: --output_dir out: refused"
    assert "Traceback" not in result.stderr


def test_a_deeply_nested_override_ends_with_one_line():
    result = run_python(
        """
        import json, common.error_hook
        json.loads('[' * 100000 + ']' * 100000)
        """
    )
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: a value is nested too deeply")


@pytest.mark.filterwarnings("ignore")
def test_evaluate_yaml_without_train_yaml_ends_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(MSD_RRW / "evaluate.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the config refers to @") and "configs/train.yaml" in last
    assert "Traceback" not in result.stderr
