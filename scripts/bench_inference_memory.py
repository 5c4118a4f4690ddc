"""Peak memory of folder inference against the class count, for each way of bringing labels back to the input grid.

Every measurement runs a bundle's ``inference.yaml`` (default brain_explog: WongNet3D, 128^3 cube, Spacingd to
1 mm) as a MONAI workflow in a fresh process on one synthetic CT-sized volume (default 512x512x61 at 0.7 x 0.7 x
2.5 mm) with an initialised checkpoint, and reports that process's peak RSS (``ru_maxrss``) and wall time:

- ``usual``: MONAI's usual postprocessing, ``Activationsd(softmax)`` + ``Invertd`` of every class + argmax;
- ``streamed``: ``common.inference.inversion.InvertedArgmaxd`` with ``channels_per_step`` 1, 2 (the bundles' default)
  and 4;
- ``argmax_first``: argmax on the network grid, labels inverted by nearest neighbour.

Labels of each variant are compared with ``usual`` (voxels that differ). Example::

    python scripts/bench_inference_memory.py --classes 20 117 --skip usual:117
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USUAL_POSTPROCESSING = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {
        "_target_": "Invertd",
        "keys": "pred",
        "transform": "@preprocessing",
        "orig_keys": "image",
        "nearest_interp": False,
    },
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
]
VARIANTS = {
    "usual": {"postprocessing#transforms": USUAL_POSTPROCESSING},
    "streamed": {"channels_per_step": 1},
    "streamed2": {"channels_per_step": 2},
    "streamed4": {"channels_per_step": 4},
    "argmax_first": {"inversion#argmax_first": True},
}


def worker(config: Path, workdir: Path, num_classes: int, variant: str, overrides: dict) -> None:
    """Run one inference in this process and print its peak RSS, time and output path as JSON."""
    from monai.bundle import ConfigWorkflow

    settings = {
        "dataset_dir": str(workdir / "in"),
        "output_dir": str(workdir / f"out_{variant}_{num_classes}"),
        "bundle_root": str(workdir),
        "ckpt_path": str(workdir / f"model_{num_classes}.pt"),
        "num_classes": num_classes,
        "progress": False,
        **overrides,
        **VARIANTS[variant],
    }
    workflow = ConfigWorkflow(config_file=str(config), workflow_type="infer", **settings)
    workflow.initialize()
    start = time.perf_counter()
    try:
        workflow.run()
    except SystemExit as error:
        raise RuntimeError(f"inference failed with status {error.code}") from error
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak_mb, "seconds": seconds, "output": settings["output_dir"]}))


def prepare(config: Path, workdir: Path, shape: tuple[int, ...], spacing: list[float], classes: list[int], overrides):
    """Write the synthetic volume and one initialised checkpoint per class count."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    rng = np.random.default_rng(0)
    volume = rng.normal(0.0, 300.0, size=shape).astype(np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-like, as many CTs
    (workdir / "in").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), workdir / "in" / "ct.nii.gz")
    for num_classes in classes:
        parser = ConfigParser()
        parser.read_config(str(config))
        parser.update({"num_classes": num_classes, **overrides})
        torch.manual_seed(0)
        torch.save(parser.get_parsed_content("network_def").state_dict(), workdir / f"model_{num_classes}.pt")


def main(argv: list[str] | None = None) -> None:
    """Measure every variant at every class count, each in a fresh process, and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="brain_explog")
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 117])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 61])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 2.5])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--skip", nargs="*", default=[], help="variant:classes pairs not to run (e.g. usual:117)")
    parser.add_argument("--set", default="{}", help="JSON overrides of the inference config (e.g. a smaller network)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = REPO / "bundles" / args.bundle / "configs" / "inference.yaml"
    overrides = json.loads(args.set)
    if args.worker:
        workdir, num_classes, variant = args.worker
        worker(config, Path(workdir), int(num_classes), variant, overrides)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(config, workdir, tuple(args.shape), args.spacing, args.classes, overrides)
        print(f"{args.bundle}: volume {args.shape} at {args.spacing} mm, network {overrides or 'as configured'}")
        print(f"{'classes':>7} {'variant':>13} {'peak RSS MB':>12} {'seconds':>8} {'voxels != usual':>16}")
        for num_classes in args.classes:
            reference = None
            for variant in args.variants:
                if f"{variant}:{num_classes}" in args.skip:
                    continue
                command = [sys.executable, __file__, "--bundle", args.bundle, "--set", args.set, "--worker", tmp,
                           str(num_classes), variant]  # fmt: skip
                result = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, cwd=REPO)
                if result.returncode != 0:
                    print(f"{num_classes:>7} {variant:>13} failed: {result.stderr.strip().splitlines()[-1:]}")
                    continue
                measured = json.loads(result.stdout.strip().splitlines()[-1])
                labels = _labels(Path(measured["output"]) / "ct.nii.gz")
                if variant == "usual":
                    reference = labels
                differ = "-" if reference is None else f"{int((labels != reference).sum())} / {labels.size}"
                print(f"{num_classes:>7} {variant:>13} {measured['peak_rss_mb']:>12.0f} {measured['seconds']:>8.1f} "
                      f"{differ:>16}", flush=True)  # fmt: skip


def _labels(path: Path):
    import nibabel as nib
    import numpy as np

    return np.asanyarray(nib.load(path).dataobj)


if __name__ == "__main__":
    main()
