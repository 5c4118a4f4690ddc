"""The Python pieces the bundle configs use: gradient clipping and datalist loading."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from common.data.datalists import load_datalist
from common.training.clipping import GradientClipping


def test_gradient_clipping_limits_the_l2_norm_before_the_step():
    weight = torch.nn.Parameter(torch.ones(4))
    (weight * 100.0).sum().backward()  # gradient norm 200
    GradientClipping([weight], max_norm=5.0)(SimpleNamespace(amp=False))
    assert weight.grad.norm().item() == pytest.approx(5.0, rel=1e-4)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        GradientClipping([weight], max_norm=0.0)


def test_load_datalist_resolves_only_the_file_fields(tmp_path):
    (tmp_path / "case_00000").mkdir()
    (tmp_path / "HGG").mkdir()
    entry = {"image": ["case_00000/t1.nii.gz", "case_00000/t2.nii.gz"], "label": "case_00000/seg.nii.gz"}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{**entry, "subject": "case_00000", "group": "HGG"}]}))
    [item] = load_datalist(datalist, "training")
    assert item["image"] == [str(tmp_path / "case_00000" / "t1.nii.gz"), str(tmp_path / "case_00000" / "t2.nii.gz")]
    assert item["label"] == str(tmp_path / "case_00000" / "seg.nii.gz")
    assert (item["subject"], item["group"]) == ("case_00000", "HGG")
    with pytest.raises(ValueError, match=r"datalist.json: no 'test' list"):
        load_datalist(datalist, "test")
    with pytest.raises(FileNotFoundError, match="missing.json: datalist not found"):
        load_datalist(tmp_path / "missing.json")
