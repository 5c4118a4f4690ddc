"""multi_gpu_train.yaml with 2 gloo CPU processes: disjoint data per rank, reduced metrics, rank 0 alone writes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "acdc17_rrw"
OVERLAYS = REPO_ROOT / "tests" / "configs"
CONFIGS = [
    str(BUNDLE / "configs" / "train.yaml"),
    str(BUNDLE / "configs" / "multi_gpu_train.yaml"),
    str(OVERLAYS / "multi_gpu_probe.yaml"),
]
TINY_NETWORK = {"patch_size": [64, 64], "filters": [4, 8, 8, 16, 16, 16], "sw_batch_size": 8}
SPLITS = ("training", "validation")
RANK0_ONLY = ["FinalWeightsSaver", "StatsHandler", "TensorBoardStatsHandler", "ProgressBar"]


@pytest.fixture(scope="module")
def distributed_run(prepared_acdc_release, tmp_path_factory) -> dict:
    data = prepared_acdc_release
    root, probe = tmp_path_factory.mktemp("ddp_run"), tmp_path_factory.mktemp("ddp_probe")
    overrides = {
        **TINY_NETWORK,
        "dataset_dir": str(data),
        "bundle_root": str(root),
        "probe_dir": str(probe),
        "epochs": 2,
        "batch_size": 1,
        "iterations_per_epoch": 2,  # one pass over each rank's 2 training volumes
        "samples_per_volume": 2,
        "num_workers": 0,
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", str(CONFIGS),
        *[item for key, value in overrides.items() for item in (f"--{key}", json.dumps(value))],
    ]  # fmt: skip
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {
        rank: [ast.literal_eval(line) for line in (probe / f"rank{rank}.txt").read_text().splitlines()]
        for rank in (0, 1)
    }
    datalist = json.loads((data / "datalist.json").read_text())
    return {"root": root, "records": records, "data": data, **{split: datalist[split] for split in SPLITS}}


def field(records: list[dict], key: str) -> list:
    return [record[key] for record in records if key in record]


def test_the_two_ranks_train_and_validate_on_disjoint_data(distributed_run):
    records, data = distributed_run["records"], distributed_run["data"]
    for split, key in zip(SPLITS, ("train", "validate"), strict=True):
        expected = {str(data / case["image"]) for case in distributed_run[split]}
        per_rank = [[name for batch in field(records[rank], key) for name in batch] for rank in (0, 1)]
        for epoch in range(2):  # every epoch splits the cases between the ranks
            half = len(expected) // 2 * (2 if key == "train" else 1)  # 2 slices per training volume
            seen = [set(names[epoch * half : (epoch + 1) * half]) for names in per_rank]
            assert not seen[0] & seen[1], (split, epoch)
            assert seen[0] | seen[1] == expected, (split, epoch)


def test_validation_metrics_are_reduced_across_ranks(distributed_run):
    num_validation = len(distributed_run["validation"])
    for rank in (0, 1):
        assert field(distributed_run["records"][rank], "reduced_cases") == [num_validation] * 2


def test_only_rank_0_saves_checkpoints_and_writes_logs(distributed_run):
    root, records = distributed_run["root"], distributed_run["records"]
    (rank0,), (rank1,) = (records[rank][:1] for rank in (0, 1))
    assert all(name in rank0["train_handlers"] for name in RANK0_ONLY)
    assert not set(RANK0_ONLY) & set(rank1["train_handlers"]) and "ValidationHandler" in rank1["train_handlers"]
    assert rank1["val_handlers"] == [] and {"AtomicCheckpointSaver", "EpochMetricsCSV"} <= set(rank0["val_handlers"])
    files = sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
    events = [name for name in files if "tfevents" in name]
    assert events and all(name.split(".")[-2] == str(rank0["pid"]) for name in events)  # event files carry the pid
    assert [name for name in files if "tfevents" not in name] == [
        "eval/validation_metrics.csv", "models/checkpoint.pt", "models/model.pt",
    ]  # fmt: skip
    last = torch.load(root / "models" / "checkpoint.pt", weights_only=True)
    assert last["trainer"]["epoch_length"] > 0 and last["lr_scheduler"]["last_epoch"] == 2
    final = torch.load(root / "models" / "model.pt", weights_only=True)
    for state in (last["model"], final):  # saved without the DDP wrapper
        assert state and not any(key.startswith("module.") for key in state)
