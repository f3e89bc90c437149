"""Images per second of centralized split training and evaluation, and of the data loader.

Usage: ``python benchmarks/centralized_throughput.py [--steps 8] [--batch 128] [--threads 1]``

VGG11-BN split after conv 2 with the 8-channel bottleneck (the paper's setting) on CIFAR-sized
3x32x32 batches; the step is the project's ``train_step`` (client forward, decoder step,
encoder step) and evaluation is the deployed path (encoder, noise, decoder). The loader figure
is ``BatchLoader`` cutting augmented batches from uint8 images in memory, to show that the
model, not the data, dominates an epoch. Runs on the CPU and, when present, on CUDA; on the CPU
the training and evaluation figures are measured in both memory layouts, side by side
(``fl_cem/training/layout.py``: the CPU runs these 32x32 inputs channels-last). Prints and
writes ``benchmarks/results/centralized_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fl_cem.config import Config
from fl_cem.data import BatchLoader, ImageSet
from fl_cem.reporting.run_dir import atomic_write_bytes, environment
from fl_cem.training.layout import place
from fl_cem.training.schedule import Position
from fl_cem.training.setup import build_client, build_model, build_server
from fl_cem.training.step import evaluate, train_step

INPUT = (3, 32, 32)
RESULTS = Path(__file__).parent / "results" / "centralized_throughput.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: torch.device, steps: int, batch: int, memory_format: torch.memory_format | None = None) -> dict[str, float]:
    """Median-of-steps images/s for training, evaluation and batch loading on ``device``.

    ``memory_format`` overrides the layout the project picks for the device (for comparison).
    """
    cfg = Config.from_flat({"train.batch-size": batch, "run.device": device.type})
    model = build_model(cfg, INPUT, 10, (0.5,) * 3, (0.25,) * 3)
    client = build_client(cfg, model, 10, 50_000, device)
    server = build_server(cfg, model, device)
    if memory_format is not None:
        place(client.encoder, device, memory_format)
        place(server.decoder, device, memory_format)
        server.memory_format = memory_format
    x = torch.rand(batch, *INPUT, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(steps + 2):
        sync(device)
        tick = time.perf_counter()
        train_step(client, server, x, y, i, Position(0))
        sync(device)
        if i >= 2:  # the first steps allocate and tune kernels
            times.append(time.perf_counter() - tick)
    train = batch / statistics.median(times)

    batches = [(x, y)] * steps
    sync(device)
    tick = time.perf_counter()
    evaluate(client, server, batches, seed=0)
    sync(device)
    infer = batch * steps / (time.perf_counter() - tick)

    images = ImageSet(torch.randint(0, 256, (50_000, *INPUT), dtype=torch.uint8), torch.randint(0, 10, (50_000,)))
    loader = BatchLoader(images, batch, device, shuffle=True, augment=True, flip=True)
    tick = time.perf_counter()
    count = 0
    for i, (xb, _) in enumerate(loader):
        count += len(xb)
        if i == 4 * steps:
            break
    sync(device)
    load = count / (time.perf_counter() - tick)
    return {"train_images_per_s": train, "eval_images_per_s": infer, "loader_images_per_s": load, "train_step_ms": 1000 * batch / train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    out = {"environment": environment(), "threads": args.threads, "batch": args.batch, "model": "vgg11 cut 2, bottleneck 8, CIFAR 3x32x32"}
    for device in devices:
        out[device.type] = measure(device, args.steps, args.batch)
        figures = out[device.type]
        print(
            f"{device.type}: train {figures['train_images_per_s']:.0f} img/s ({figures['train_step_ms']:.0f} ms/step), "
            f"eval {figures['eval_images_per_s']:.0f} img/s, loader {figures['loader_images_per_s']:.0f} img/s"
        )
    contiguous = measure(torch.device("cpu"), args.steps, args.batch, torch.contiguous_format)
    out["cpu_contiguous_layout"] = contiguous
    out["cpu_channels_last_speedup"] = {
        "train": out["cpu"]["train_images_per_s"] / contiguous["train_images_per_s"],
        "eval": out["cpu"]["eval_images_per_s"] / contiguous["eval_images_per_s"],
    }
    print(
        f"cpu, contiguous layout: train {contiguous['train_images_per_s']:.0f} img/s, eval {contiguous['eval_images_per_s']:.0f} img/s "
        f"(channels-last: x{out['cpu_channels_last_speedup']['train']:.2f} train, x{out['cpu_channels_last_speedup']['eval']:.2f} eval)"
    )
    atomic_write_bytes(RESULTS, json.dumps(out, indent=2).encode())
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
