"""Benchmark forward+backward of the losses of ``common.losses`` against MONAI ``DiceLoss``, in one process.

Every loss runs on the same logits ``(B, C, *spatial)`` (default ``(2, 20, 128, 128, 128)``) and integer labels.
The candidates run round-robin (one step of each per round) so that load from other processes on the machine
hits all of them alike; the table gives the median over rounds and the ratio to MONAI ``DiceLoss(softmax=True,
to_onehot_y=True)``. Target: every ratio <= 1.5.

``MultiResolutionLoss`` gets three outputs (full, 1/2 and 1/4 resolution, as the networks return in training),
so it does 1 + 1/8 + 1/64 of the work of the others; MONAI's ``DeepSupervisionLoss`` on the same outputs is shown
for reference. The RW losses run on dense ``(B, C, ...)`` and compact ``(B, 2, ...)`` targets of the same RRW-shaped
map (their time does not depend on the map's values); ``scripts/bench_scale.py`` compares the two forms in detail.

    python scripts/bench_losses.py                    # (2, 20, 128^3), 5 rounds: about 3 minutes on 2 cores
    python scripts/bench_losses.py --side 64 --repeats 3   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from monai.losses import DeepSupervisionLoss, DiceLoss, FocalLoss

from common.losses import (
    ExpLogLoss,
    MultiResolutionLoss,
    RegionWiseLoss,
    RWCombinedLoss,
    RWWeightedCrossEntropyLoss,
    SADiceLoss,
)

TARGET_RATIO = 1.5


def interleaved_medians(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Run every function once per round, ``warmup + repeats`` rounds; return the median seconds after warm-up."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for round_index in range(warmup + repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def loss_steps(batch: int, num_classes: int, side: int, device: torch.device) -> dict[str, Callable[[], object]]:
    """One forward+backward closure per loss, all on shared inputs."""
    torch.manual_seed(0)
    spatial = (side,) * 3
    labels = torch.randint(0, num_classes, (batch, 1, *spatial), device=device)
    outputs = [
        torch.randn(batch, num_classes, *(s // 2**level for s in spatial), device=device, requires_grad=True)
        for level in range(3)
    ]
    logits = outputs[0]
    label_weights = torch.rand(num_classes).add(0.5).tolist()

    def step(loss: torch.nn.Module, prediction: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> None:
        for output in outputs:
            output.grad = None
        loss(prediction, target).backward()

    candidates: dict[str, tuple[torch.nn.Module, torch.Tensor | list[torch.Tensor], torch.Tensor]] = {
        "MONAI DiceLoss (baseline)": (DiceLoss(to_onehot_y=True, softmax=True), logits, labels),
        "ExpLogLoss (gamma 0.3, w_l)": (ExpLogLoss(to_onehot_y=True, label_weights=label_weights), logits, labels),
        "ExpLogLoss linear Dice": (
            ExpLogLoss(w_dice=1, w_cross=0, gamma=1, dice_form="linear", to_onehot_y=True),
            logits,
            labels,
        ),
        "SADiceLoss": (SADiceLoss(to_onehot_y=True, softmax=True), logits, labels),
        "MultiResolutionLoss(ExpLog), 3 levels, trainable": (
            MultiResolutionLoss(ExpLogLoss(to_onehot_y=True), trainable=True),
            outputs,
            labels,
        ),
        "MONAI DeepSupervisionLoss(Dice), 3 levels (ref.)": (
            DeepSupervisionLoss(DiceLoss(to_onehot_y=True, softmax=True), weights=[1.0, 0.1, 0.01]),
            outputs,
            labels.float(),  # MONAI's nearest resizing fails on integer tensors
        ),
    }
    # RW losses on an RRW-shaped map (own class in [-1, 0), +1 elsewhere): their time does not depend on its values
    own_value = -torch.rand(batch, 1, *spatial, device=device)
    dense_map = torch.ones(batch, num_classes, *spatial, device=device).scatter_(1, labels, own_value)
    dense_target = torch.cat([labels.float(), dense_map], dim=1)
    compact_target = torch.cat([labels.float(), own_value], dim=1)
    candidates.update(
        {
            "RegionWiseLoss, dense map": (RegionWiseLoss(), logits, dense_map),
            "RegionWiseLoss, compact map": (RegionWiseLoss(compact=True), logits, compact_target),
            "RWCombinedLoss(dice, gradual), dense": (RWCombinedLoss("dice", "gradual"), logits, dense_target),
            "RWCombinedLoss(dice, gradual), compact": (RWCombinedLoss(compact=True), logits, compact_target),
            "RWWeightedCrossEntropyLoss, compact": (RWWeightedCrossEntropyLoss(compact=True), logits, compact_target),
            "FocalLoss (original: MONAI's with weight C, gamma 2)": (
                FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, weight=logits.shape[1]),
                logits,
                labels,
            ),
        }
    )
    return {name: (lambda args=args: step(*args)) for name, args in candidates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    steps = loss_steps(args.batch, args.classes, args.side, device)
    if device.type == "cuda":
        steps = {name: (lambda f=f: (f(), torch.cuda.synchronize())) for name, f in steps.items()}
    medians = interleaved_medians(steps, args.repeats)

    baseline = medians["MONAI DiceLoss (baseline)"]
    shape = "x".join(map(str, (args.batch, args.classes, *(args.side,) * 3)))
    print(f"\nlogits {shape} on {device} (torch threads: {torch.get_num_threads()}), median of {args.repeats} rounds")
    print(f"| loss | fwd+bwd (ms) | ratio to DiceLoss | <= {TARGET_RATIO}x |")
    print("|---|---|---|---|")
    for name, seconds in medians.items():
        ratio = seconds / baseline
        print(f"| {name} | {seconds * 1e3:9.1f} | {ratio:5.2f} | {'yes' if ratio <= TARGET_RATIO else 'NO'} |")


if __name__ == "__main__":
    main()
