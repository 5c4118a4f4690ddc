"""Parameters and inference time of ``WongNet3D`` against MONAI ``VNet`` (and ``SAUNet``), side by side in one run.

Each network (eval mode, ``torch.inference_mode``) segments one ``1 x 1 x side^3`` volume per round; the networks
run round-robin so that load from other processes hits all of them alike, and the table gives the median over
rounds. Targets from the paper (Wong et al. 2018, Sec. 3.2): its network has about 5 M parameters (here 4.5-5.5 M
with 1 input channel and 20 classes) against about 71 M for its V-Net, and takes about 0.4 s per 128^3 volume
against 0.9 s (a ratio of 0.44; target here at most 0.5x MONAI's ``VNet``, which has 45.7 M parameters).
``SAUNet`` is the SA Dice paper's network as its bundles build it (heads at 1/2 and 1/4, unused in eval mode),
beside the same network built without heads: the heads cost nothing at inference.

``--memory`` also reports what a training step of ``WongNet3D`` keeps for the backward pass (bytes of the distinct
tensors autograd saves in one forward pass, batch 1, 20 classes), with and without its deep supervision paths:
the paper omits the widest block's tensor from deep supervision so that training fits in 12 GB; the table adds
what that tensor would cost at full resolution (192 channels, float32) for comparison.

    python scripts/bench_networks.py                        # 128^3 and 96^3 on CPU: about 5 minutes on 2 cores
    python scripts/bench_networks.py --sides 64 --repeats 2 # smoke run
    python scripts/bench_networks.py --device cuda          # on a GPU (add --half for float16 autocast)
    python scripts/bench_networks.py --sides 128 --memory   # + training activation memory at 128^3 (a minute)
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from bench_losses import interleaved_medians
from monai.networks.nets import VNet

from common.networks import SAUNet, WongNet3D

TARGET_RATIO = 0.5
PARAMETER_RANGE = (4.5e6, 5.5e6)


def parameter_count(network: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in network.parameters())


def infer(network: torch.nn.Module, image: torch.Tensor, half: bool) -> None:
    autocast = torch.autocast(image.device.type, dtype=torch.float16) if half else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        network(image)
    if image.device.type == "cuda":
        torch.cuda.synchronize()


def saved_activation_bytes(network: torch.nn.Module, image: torch.Tensor) -> int:
    """Bytes of the distinct tensor storages autograd saves for backward in one training-mode forward pass."""
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        network.train()(image)
    return sum(storages.values())


def report_training_memory(side: int, classes: int, device: torch.device) -> None:
    """Table of the saved activations of WongNet3D with and without deep supervision at ``side^3``."""
    image = torch.randn(1, 1, side, side, side, device=device)
    print(f"\n| WongNet3D training step, 1x1x{side}^3, {classes} classes | saved for backward (GB) |")
    print("|---|---|")
    for label, deep_supervision in (("deep supervision (paper)", True), ("no deep supervision", False)):
        torch.manual_seed(0)
        network = WongNet3D(in_channels=1, out_channels=classes, deep_supervision=deep_supervision).to(device)
        print(f"| {label} | {saved_activation_bytes(network, image) / 1e9:.2f} |", flush=True)
    widest = WongNet3D().encoder[-1].conv[0].conv.out_channels
    print(f"| the widest block's tensor at full resolution, one copy | {widest * side**3 * 4 / 1e9:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[128, 96])
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--half", action="store_true", help="float16 autocast (GPU)")
    parser.add_argument("--memory", action="store_true", help="training activation memory of WongNet3D")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    networks = {
        "WongNet3D": WongNet3D(in_channels=1, out_channels=args.classes),
        "MONAI VNet": VNet(spatial_dims=3, in_channels=1, out_channels=args.classes),
        "SAUNet": SAUNet(in_channels=1, out_channels=args.classes, deep_supervision=True),
        "SAUNet, no heads": SAUNet(in_channels=1, out_channels=args.classes, deep_supervision=False),
    }
    networks = {name: network.to(device).eval() for name, network in networks.items()}
    counts = {name: parameter_count(network) for name, network in networks.items()}
    low, high = PARAMETER_RANGE
    print(f"device {device}, torch threads {torch.get_num_threads()}, median of {args.repeats} rounds")
    print("\n| network | parameters (M) | ratio to VNet |")
    print("|---|---|---|")
    for name, count in counts.items():
        print(f"| {name} | {count / 1e6:.3f} | {count / counts['MONAI VNet']:.3f} |")
    in_range = low <= counts["WongNet3D"] <= high
    print(f"WongNet3D parameters in [{low / 1e6}, {high / 1e6}] M: {'yes' if in_range else 'NO'}")

    print(f"\n| input | network | inference (s) | ratio to VNet | <= {TARGET_RATIO}x |")
    print("|---|---|---|---|---|")
    for side in args.sides:
        image = torch.randn(1, 1, side, side, side, device=device)

        steps = {
            name: (lambda network=network, image=image: infer(network, image, args.half))
            for name, network in networks.items()
        }
        medians = interleaved_medians(steps, args.repeats)
        for name, seconds in medians.items():
            ratio = seconds / medians["MONAI VNet"]
            verdict = ("yes" if ratio <= TARGET_RATIO else "NO") if name == "WongNet3D" else "-"
            print(f"| 1x1x{side}^3 | {name} | {seconds:.3f} | {ratio:.2f} | {verdict} |", flush=True)

    if args.memory:
        report_training_memory(args.sides[0], args.classes, device)


if __name__ == "__main__":
    main()
