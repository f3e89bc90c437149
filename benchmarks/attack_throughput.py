"""Training throughput of each inversion attack at the paper's CIFAR shapes (8x8x8 smashed -> 3x32x32).

Usage: ``python benchmarks/attack_throughput.py [--batches 3] [--batch-size 128] [--rmle-steps 10]``

Decoder and GAN: images per second through ``fit`` (one epoch over ``batches`` batches, after a
small warm-up). rMLE has no training; its cost is the per-image optimisation in ``invert``,
reported as image-steps per second and projected to ``attack.rmle-steps`` steps per image.
The client encoder is a stand-in (a frozen stride-4 conv, 3 -> 8 channels, plus noise of std
0.025): the VGG11 encoder would add about 20 MMAC per image to the decoder's ~90 MMAC.
Results are printed and written to ``benchmarks/results/attack_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor, nn

from fl_cem.attacks.base import SmashFn
from fl_cem.attacks.evaluate import make_attack
from fl_cem.attacks.networks import decoding_network
from fl_cem.registry import list_attacks
from fl_cem.config import AttackConfig

INPUT = (3, 32, 32)
SMASHED = (8, 8, 8)
SIGMA = 0.025
RESULTS = Path(__file__).parent / "results" / "attack_throughput.json"


def stand_in_smash(device: torch.device) -> SmashFn:
    """A frozen conv encoder with the paper's output shape and noise, in eval mode."""
    encoder = nn.Conv2d(INPUT[0], SMASHED[0], kernel_size=4, stride=4).to(device).eval().requires_grad_(False)

    def smash(x: Tensor) -> Tensor:
        z = encoder(x)
        return z + SIGMA * torch.randn_like(z)

    return smash


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_attack(name: str, cfg: AttackConfig, images: Tensor, device: torch.device, rmle_steps: int) -> dict[str, float]:
    """Seconds and images/s of one fit (decoder, gan) or one short inversion (rmle)."""
    cfg = replace(cfg, name=name, epochs=1, gan_epochs=1, gan_n_critic=1, rmle_steps=rmle_steps)
    attack = make_attack(cfg, stand_in_smash(device), INPUT, SMASHED, device)
    # a small warm-up pays for first-call allocations and kernel selection outside the timing
    warm_up = images[:16]
    if name == "rmle":
        attack.fit(warm_up)
        z = attack.smash(images)
        attack.invert(z[:2])
        synchronize(device)
        start = time.perf_counter()
        attack.invert(z)
        synchronize(device)
        seconds = time.perf_counter() - start
        step_rate = len(images) * rmle_steps / seconds
        return {
            "seconds": seconds,
            "image_steps_per_s": step_rate,
            "images_per_s": step_rate / AttackConfig().rmle_steps,
        }
    attack.fit(warm_up)
    synchronize(device)
    start = time.perf_counter()
    attack.fit(images)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_s": len(images) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="timed batches per attack (default 3)")
    parser.add_argument("--batch-size", type=int, default=AttackConfig().batch_size)
    parser.add_argument("--rmle-steps", type=int, default=10, help="timed rMLE steps (default 10)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cfg = AttackConfig(batch_size=args.batch_size)
    rows = []
    for device in devices:
        torch.manual_seed(0)
        images = torch.rand(args.batches * args.batch_size, *INPUT, device=device)
        for name in list_attacks():
            row = {"attack": name, "device": str(device), "images": len(images), "batch_size": args.batch_size}
            row |= time_attack(name, cfg, images, device, args.rmle_steps)
            rows.append(row)
            print(f"{name:8s} {str(device):5s} {row['images_per_s']:10.1f} images/s  ({row['seconds']:.2f} s)")

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # throughput on a shared machine falls with its load; record it next to the numbers
        "load_average_1min": os.getloadavg()[0],
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "shapes": {"input": INPUT, "smashed": SMASHED},
        "decoder_parameters": sum(p.numel() for p in decoding_network(SMASHED, INPUT).parameters()),
        "rmle_projection_steps": AttackConfig().rmle_steps,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
