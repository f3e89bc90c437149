"""GPU epoch times: the paper's 240-epoch schedule, and federated N = 10 / N = 100 on fractional GPUs.

Usage: ``python benchmarks/gpu_epoch.py [--data PATH] [--epochs 3] [--clients 10 100] [--rounds 2]
[--smoke] [--out PATH]``

Centralized: the paper's setting (CIFAR-10 from the JPEG tarball, VGG11 split after conv 2 with
the 8-channel bottleneck, batch 128, CEM lambda 16, ``run.device = auto``) for ``--epochs``
epochs. An epoch's wall time runs from one epoch's end to the next (training, evaluation of
the validation and test splits, the CEM measurement, the checkpoint); the first epoch carries
the warm-up (CUDA context, cuDNN's algorithm search), so the 240-epoch estimate is
``first + 239 x median(later epochs)``, printed with its numbers. Federated: the same model on
``N`` simulated clients, each a Ray actor with one CPU and ``1/N`` of the GPU
(``client-resources-num-gpus``), SplitFed, chunk 1, lockstep, through the project's in-process
launcher (``run_federated``); each round is one local epoch and its training phase is timed by
the server (Ray start-up, node discovery and evaluation excluded). The JSON (environment with
GPU name, torch, CUDA, cuDNN, flwr and ray versions; every epoch and round) is rewritten after
each stage, so a run stopped early keeps what it measured.

``--smoke`` runs the same code on a few batches of ``--data`` (a CPU test does this end to end).

On a lent H100 (``nvidia-h100-x1``; /work/.library/device/README.md) the image has torch but not
flwr or ray, and one call carries at most 64 MiB: ray, flwr with the requirements the image
lacks, the 19 MB tarball and the repository come to 69 MiB even with Ray's Java jar, web UI,
libraries and symbols left out. So two calls on the same warm machine (it waits 30 s after a
call): the first installs ray and times the centralized stage, which needs neither package;
the second installs flwr and times the federated stage. Ignored folders stay between calls.
Here, in the repository root, once (wheel versions: the ones this project's venv runs)::

    printf '/.gpu/\n/.gpu-*/\n' >> .git/info/exclude; mkdir -p .gpu/a .gpu/b /tmp/ray-whl
    cp ../shared/data/cifar10-jpeg.tar.gz .gpu/a/
    P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64"
    python -m pip download $P -d /tmp/ray-whl ray==2.55.1
    (mkdir /tmp/ray-whl/r && cd /tmp/ray-whl/r && unzip -q ../ray-*.whl \
      && rm -r ray/jars ray/dashboard/client/build ray/rllib ray/tune ray/train ray/serve ray/data ray/llm \
      && strip --strip-unneeded ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server \
      && zip -q -9 -r "$OLDPWD/.gpu/a/ray-2.55.1-cp312-cp312-manylinux2014_x86_64.whl" .)
    python -m pip download $P -d .gpu/b flwr==1.41.0 cryptography==50.0.2 cffi==2.1.1 pycryptodome==3.24.1 \
      grpcio-health-checking==1.81.1 iterators==0.0.2 tomli==2.5.0 tomli-w==1.2.0 wcwidth==0.9.4 dill==0.4.1 \
      sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 fastapi==0.138.2 starlette==1.3.1 pydantic==2.14.4 \
      pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 jsonschema==4.26.0 \
      jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
    du -sh .gpu/a .gpu/b   # about 51 MB and 18 MB

Call 1, ``carry = [".gpu/a"]``, ``timeout_s = 360`` (JPEG decoding, then 3 epochs)::

    I="python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu-site"; export PYTHONPATH=.gpu-site:$PWD FL_CEM_DATA=$PWD/.gpu-cache PYTHONUNBUFFERED=1; $I .gpu/a/*.whl && nvidia-smi -L && python3 benchmarks/gpu_epoch.py --data .gpu/a/cifar10-jpeg.tar.gz --clients --out .gpu-out/gpu_epoch.json 2>&1 | tee $OUT/log1.txt; cp .gpu-out/gpu_epoch.json $OUT/

Call 2, at once, ``carry = [".gpu/b"]``, ``timeout_s = 420`` (N = 10, then N = 100, two rounds each)::

    I="python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu-site"; export PYTHONPATH=.gpu-site:$PWD FL_CEM_DATA=$PWD/.gpu-cache PYTHONUNBUFFERED=1; $I .gpu/b/*.whl && python3 benchmarks/gpu_epoch.py --data .gpu/a/cifar10-jpeg.tar.gz --epochs 0 --out .gpu-out/gpu_epoch.json 2>&1 | tee $OUT/log2.txt; cp .gpu-out/gpu_epoch.json $OUT/

Commit the second call's ``gpu_epoch.json`` as ``benchmarks/results/gpu_epoch.json`` (the file at
``--out`` is updated, so it holds both stages). If the machine went back between the calls,
call 2 fails at once for want of ray: run call 1 again, then call 2. An import error names a
requirement missing there: add its wheel to ``.gpu/b``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib import metadata
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import torch

from fl_cem.config import Config
from fl_cem.federated.launch import run_federated
from fl_cem.reporting.run_dir import atomic_write_bytes, environment
from fl_cem.training.centralized import train_centralized

RESULTS = Path(__file__).parent / "results"
CIFAR_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
PAPER_EPOCHS = 240
PAPER = {
    "data.source": "imagefolder", "model.arch": "vgg11", "model.cut": 2, "model.bottleneck": 8,
    "train.batch-size": 128, "cem.lambda": 16.0, "run.device": "auto",
}
FEDERATED = {"federated.local-epochs": 1, "federated.chunk": 1, "federated.order": "lockstep", "data.test-subset": 1000}
SMOKE = {"data.train-subset": 0, "data.test-subset": 0, "data.val-fraction": 0.125, "train.batch-size": 8, "cem.clusters-per-class": 1}


def gpu_environment() -> dict[str, Any]:
    """``environment()`` plus what a GPU figure depends on."""
    env: dict[str, Any] = {**environment(), "torch_cuda": torch.version.cuda or "none", "cudnn": str(torch.backends.cudnn.version())}
    for package in ("flwr", "ray"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = "missing"
    return env


def centralized(base: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Wall time of each epoch (end to end) and the 240-epoch estimate."""
    cfg = Config.from_flat({**base, "train.epochs": epochs, "run.name": "gpu_centralized"})
    ends = [time.perf_counter()]
    results = train_centralized(cfg, log=print, on_epoch_end=lambda epoch, record: ends.append(time.perf_counter()))
    walls = [b - a for a, b in zip(ends, ends[1:])]
    steady = statistics.median(walls[1:]) if len(walls) > 1 else walls[0]
    total = walls[0] + (PAPER_EPOCHS - 1) * steady
    formula = f"{walls[0]:.1f} s + {PAPER_EPOCHS - 1} x {steady:.2f} s = {total:.0f} s ({total / 3600:.2f} h)"
    print(f"centralized: epochs {', '.join(f'{w:.2f}' for w in walls)} s; {PAPER_EPOCHS} epochs = first + {PAPER_EPOCHS - 1} x median(later) = {formula}")
    return {
        "epoch_wall_s": walls,
        "train_time_s": [e["train_time_s"] for e in results["epochs"]],
        "steady_epoch_s": steady,
        "paper_schedule_s": total,
        "formula": f"first + {PAPER_EPOCHS - 1} x median(later) = {formula}",
    }


def federated(base: dict[str, Any], clients: int, rounds: int) -> dict[str, Any]:
    """One round per local epoch on ``clients`` actors sharing the GPU (none without CUDA)."""
    gpus = round(1 / clients, 4) if torch.cuda.is_available() else 0.0
    cfg = Config.from_flat({**FEDERATED, **base, "federated.rounds": rounds, "partition.num-partitions": clients, "run.name": f"gpu_fed{clients}"})
    tick = time.perf_counter()
    results = run_federated(cfg, clients, client_cpus=1.0, client_gpus=gpus)
    epochs = [r["train_time_s"] for r in results["rounds"]]
    row = {"client_gpus": gpus, "epoch_s": epochs, "last_epoch_s": epochs[-1], "messages": results["rounds"][-1]["messages"], "wall_s": time.perf_counter() - tick}
    print(f"federated N={clients} ({gpus} GPU each): epochs {', '.join(f'{e:.2f}' for e in epochs)} s, whole run {row['wall_s']:.0f} s")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(CIFAR_TARBALL), help="CIFAR-10 image folder or .tar.gz")
    parser.add_argument("--epochs", type=int, default=3, help="centralized epochs timed (the first is warm-up); 0 skips the stage")
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=2, help="federated rounds (one local epoch each) per N")
    parser.add_argument("--smoke", action="store_true", help="a few batches of --data: checks the script, measures nothing")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/gpu_epoch[_smoke].json)")
    args = parser.parse_args()
    out_path = Path(args.out) if args.out else RESULTS / f"gpu_epoch{'_smoke' if args.smoke else ''}.json"
    # Stages not run keep what an earlier call measured (the two calls of a lent GPU)
    out: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    out |= {"environment": gpu_environment(), "smoke": args.smoke, "setting": {**PAPER, **(SMOKE if args.smoke else {})}, "data": Path(args.data).name}
    print(json.dumps(out["environment"]))
    with TemporaryDirectory() as tmp:
        base = {**out["setting"], "data.root": str(Path(args.data).resolve()), "run.output-dir": tmp}
        if args.epochs > 0:
            out["centralized"] = centralized(base, args.epochs)
            atomic_write_bytes(out_path, json.dumps(out, indent=2).encode())
        for n in args.clients:
            out[f"federated_{n}"] = federated(base, n, args.rounds)
            atomic_write_bytes(out_path, json.dumps(out, indent=2).encode())
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
