"""An independent second decoder-inversion attacker, to check that ours is not the weak one.

Usage: ``python benchmarks/independent_attack.py RUN_DIR [RUN_DIR ...] [--epochs 8]
[--aux-limit 4500] [--mode train|infer]``

What it checks
--------------
Every privacy figure of the project is "the MSE our decoder attack (``fl_cem/attacks/decoder.py``)
reaches against a victim". A defense looks strong both when it protects and when the attack is
weak, so the attack needs an outside reference. This script attacks the same finished runs with an
inversion attacker written separately, on the same auxiliary images and targets, and reports its
MSE next to the one the project recorded in the run's ``results.json``. If this attacker reaches a
clearly lower MSE at a comparable budget, the project's attack understates leakage.

Why it is independent
---------------------
Nothing of ``fl_cem/attacks/`` is reused except what fixes the threat model, so that the two
numbers are comparable and any difference is the attacker's:

- :func:`fl_cem.attacks.run.load_victims` and ``Victim.smash``: the victim's encoder, defense and
  noise exactly as the client smashes (a reimplementation could smash differently and make the
  comparison meaningless);
- :func:`fl_cem.attacks.evaluate.split_images` and ``limit_aux``: only which images are auxiliary
  and which are targets, so both attackers are scored on the same images.

The inversion network, loss, optimiser, schedule, augmentation, validation and scoring are all
written here and differ on purpose from ours (S.9 network: 3x3 stem, eight BatchNorm residual
blocks at 64 channels, transposed convs; Adam + cosine, no augmentation):

- network: a 1x1 projection of the smashed map, pre-activation residual blocks with GroupNorm and
  SiLU at 128 channels, pixel-shuffle upsampling with one residual block per resolution, sigmoid;
- training: AdamW with a per-step one-cycle learning rate, MSE (plus an optional small L1 term),
  random horizontal flips of the auxiliary images *before* smashing (the attacker owns the images,
  so it may smash any transformed copy of them), batch 64;
- a 10 % validation share of the auxiliary images, smashed once, picks the best epoch.

Writes ``benchmarks/results/independent_attack.json`` (rows merged by run name and mode, so that
several invocations accumulate).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The script is run as a file from the repository root; make `fl_cem` importable without an install too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_cem.attacks.evaluate import limit_aux, split_images  # noqa: E402  (index choice only)
from fl_cem.attacks.run import load_victims  # noqa: E402  (the client's own smashing, noise included)
from fl_cem.data import load_splits  # noqa: E402
from fl_cem.reporting.run_dir import RunDir  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "independent_attack.json"
SmashFn = Callable[[Tensor], Tensor]
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# The inversion network
# ---------------------------------------------------------------------------------------------


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm rather than BatchNorm: no train/eval gap between the fitting batches and the targets."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016, identity mappings): norm-act-conv twice."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Inverter(nn.Module):
    """Smashed data (B, c, h, w) -> images (B, C, H, W) in [0, 1].

    The 1x1 projection only remixes channels, leaving all spatial reasoning to the residual trunk
    at the smashed resolution, where it is cheapest. Each x2 step is a conv to 4x the channels and a
    pixel shuffle (no checkerboard overlap of transposed convs), followed by a residual block so
    that detail is refined at every resolution, not only at the smallest.
    """

    def __init__(self, smashed_shape: tuple[int, ...], image_shape: tuple[int, int, int], width: int = 128, blocks: int = 4) -> None:
        super().__init__()
        channels, height = smashed_shape[0], smashed_shape[1]
        image_channels, image_h, image_w = image_shape
        self.size = (image_h, image_w)
        self.project = nn.Sequential(nn.Conv2d(channels, width, 1), _norm(width), nn.SiLU())
        self.trunk = nn.Sequential(*[PreActBlock(width) for _ in range(blocks)])
        ups: list[nn.Module] = []
        current, size = width, height
        while size * 2 <= image_h:
            out = max(current // 2, 32)  # halve channels as pixels quadruple, to keep each step's cost flat
            ups += [nn.Conv2d(current, 4 * out, 3, padding=1), nn.PixelShuffle(2), PreActBlock(out)]
            current, size = out, size * 2
        self.up = nn.Sequential(*ups)
        self.head = nn.Sequential(_norm(current), nn.SiLU(), nn.Conv2d(current, image_channels, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        y = self.up(self.trunk(self.project(z)))
        if y.shape[-2:] != self.size:
            # smashed sizes that are not the image size over a power of two still get mapped
            y = F.interpolate(y, size=self.size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(y))


# ---------------------------------------------------------------------------------------------
# Training and scoring
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Hyper-parameters of the independent attacker (chosen here, not taken from the run's config)."""

    epochs: int = 8
    batch_size: int = 64
    max_lr: float = 2e-3
    weight_decay: float = 1e-4
    l1_weight: float = 0.0
    val_share: float = 0.1
    flip: bool = True
    width: int = 128
    blocks: int = 4
    seed: int = 0


@dataclass
class Outcome:
    """Scores of one attack on held-out targets, with the fitting history."""

    mse: float
    mean_image_mse: float
    best_epoch: int
    best_val_mse: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _batches(n: int, size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled index batches; a trailing batch of one is merged away, GroupNorm is fine but the loss would be noisy."""
    order = torch.randperm(n, generator=generator)
    cuts = list(range(0, n, size))
    if len(cuts) > 1 and n - cuts[-1] < 2:
        cuts.pop()
    for i, start in enumerate(cuts):
        yield order[start : cuts[i + 1] if i + 1 < len(cuts) else n]


@torch.no_grad()
def _smash_all(smash: SmashFn, images: Tensor, batch: int) -> Tensor:
    return torch.cat([smash(images[i : i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def _invert_all(net: nn.Module, z: Tensor, batch: int) -> Tensor:
    net.eval()
    return torch.cat([net(z[i : i + batch]) for i in range(0, len(z), batch)])


def per_image_mse(reconstructions: Tensor, images: Tensor) -> float:
    """Mean over images of each image's pixel MSE (images in [0, 1])."""
    return float((reconstructions - images).pow(2).flatten(1).mean(1).mean())


def independent_attack(
    train_smash: SmashFn,
    target_smash: SmashFn,
    aux: Tensor,
    targets: Tensor,
    settings: Settings | None = None,
    log: Log = print,
) -> Outcome:
    """Fit an :class:`Inverter` on ``aux`` smashed with ``train_smash``, score it on ``targets``.

    Parameters
    ----------
    train_smash : callable
        The client's smashing function for the attacker's own images (fresh noise per call).
    target_smash : callable
        The same function on a separate noise stream, standing in for what the wire carries.
    aux, targets : Tensor
        Disjoint images (N, C, H, W), float in [0, 1].
    settings : Settings, optional
        Hyper-parameters; the defaults are the benchmark's.
    log : callable
        Receives one progress line per epoch.

    Returns
    -------
    Outcome
        Per-image MSE on the targets and the mean-image baseline (the aux mean image for every target).
    """
    s = settings or Settings()
    tick = time.perf_counter()
    # a private generator and a forked global RNG: the caller's random state is left as it was
    generator = torch.Generator().manual_seed(s.seed)
    with torch.random.fork_rng():
        torch.manual_seed(s.seed)
        order = torch.randperm(len(aux), generator=generator)
        held = min(len(aux) - 2, max(1, round(s.val_share * len(aux))))
        val, train = aux[order[:held]], aux[order[held:]]
        # one fixed draw for validation, so epochs are compared on the same smashed data
        val_z = _smash_all(train_smash, val, 256)
        net = Inverter(tuple(val_z.shape[1:]), tuple(aux.shape[1:]), s.width, s.blocks)
        optimizer = torch.optim.AdamW(net.parameters(), lr=s.max_lr, weight_decay=s.weight_decay)
        steps_per_epoch = len(list(_batches(len(train), s.batch_size, torch.Generator().manual_seed(0))))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=s.max_lr, epochs=s.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25)
        best: tuple[float, int, dict[str, Tensor]] = (math.inf, 0, copy.deepcopy(net.state_dict()))
        history: list[dict[str, float]] = []
        for epoch in range(1, s.epochs + 1):
            net.train()
            loss_sum, seen = 0.0, 0
            for idx in _batches(len(train), s.batch_size, generator):
                x = train[idx]
                if s.flip:
                    flip = torch.rand(len(x), generator=generator) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                with torch.no_grad():
                    z = train_smash(x)  # smashed after flipping: a new image to the encoder, not a flipped code
                out = net(z)
                loss = F.mse_loss(out, x)
                total = loss + s.l1_weight * F.l1_loss(out, x) if s.l1_weight else loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(x)
                seen += len(x)
            val_mse = per_image_mse(_invert_all(net, val_z, 256), val)
            if val_mse < best[0]:
                best = (val_mse, epoch, copy.deepcopy(net.state_dict()))
            row = {"epoch": float(epoch), "loss": loss_sum / max(seen, 1), "val_mse": val_mse, "elapsed_s": time.perf_counter() - tick}
            history.append(row)
            log(f"  epoch {epoch}/{s.epochs}  loss {row['loss']:.5f}  val MSE {val_mse:.5f}  {row['elapsed_s']:.0f} s")
        net.load_state_dict(best[2])
        target_z = _smash_all(target_smash, targets, 256)
        mse = per_image_mse(_invert_all(net, target_z, 256), targets)
    mean_image = per_image_mse(aux.mean(0, keepdim=True).expand_as(targets), targets)
    return Outcome(mse, mean_image, best[1], best[0], history, time.perf_counter() - tick)


# ---------------------------------------------------------------------------------------------
# Finished runs
# ---------------------------------------------------------------------------------------------


def recorded_attack(results: dict[str, Any], mode: str, victim: str) -> dict[str, Any] | None:
    """The project's latest finished decoder attack of ``mode`` on ``victim`` in a run's results."""
    found = [
        a
        for a in results.get("attacks", [])
        if a.get("attack") == "decoder" and a.get("mode") == mode and a.get("status", "finished") == "finished" and a.get("victim", victim) == victim and "metrics" in a
    ]
    return found[-1] if found else None


def attack_run_dir(path: str, mode: str, aux_limit: int, settings: Settings, log: Log = print) -> list[dict[str, Any]]:
    """Attack every victim of a finished run; one result row per victim."""
    run = RunDir(path)
    cfg = run.load_config()
    results = run.read_results()
    device = torch.device("cpu")
    splits = load_splits(cfg.data, cfg.run.seed)
    aux, targets = split_images(mode, splits.train.images.float() / 255, splits.test.images.float() / 255, cfg.run.seed, cfg.attack.holdout)
    aux = limit_aux(aux, aux_limit, cfg.run.seed)
    rows = []
    for victim in load_victims(run, cfg, None, device):
        name = run.root.name if victim.federated is None else f"{run.root.name}/{victim.name}"
        log(f"{name}: {mode} mode, {len(aux)} aux images, {len(targets)} targets, sigma {cfg.noise.sigma:g}")
        # two noise streams far apart in seed space: the attacker's draws never replay the targets' noise
        outcome = independent_attack(
            victim.smash(cfg.run.seed + 7_777), victim.smash(cfg.run.seed + 3_333), aux, targets, settings, log
        )
        ours = recorded_attack(results, mode, victim.name)
        ours_mse = float(ours["metrics"]["mse"]) if ours else math.nan
        rows.append(
            {
                "run": name,
                "run_dir": str(run.root),
                "victim": victim.name,
                "mode": mode,
                "sigma": cfg.noise.sigma,
                "aux": len(aux),
                "targets": len(targets),
                "independent_mse": outcome.mse,
                "ours_mse": ours_mse,
                "mean_image_mse": outcome.mean_image_mse,
                "ours_mean_image_mse": float(ours["metrics"]["mse_mean_guess"]) if ours else math.nan,
                "ratio_independent_to_ours": outcome.mse / ours_mse if ours_mse > 0 else math.nan,
                "ours_epochs": ours.get("epochs") if ours else None,
                "ours_aux": ours.get("aux") if ours else None,
                "ours_time_s": ours.get("time_s") if ours else None,
                "best_epoch": outcome.best_epoch,
                "best_val_mse": outcome.best_val_mse,
                "seconds": outcome.seconds,
                "history": outcome.history,
                "settings": asdict(settings),
            }
        )
    return rows


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save(rows: list[dict[str, Any]], path: Path = RESULTS) -> None:
    """Merge rows into the results file by (run, mode): a rerun replaces its row, other runs stay."""
    existing = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    merged = {(r["run"], r["mode"]): r for r in existing}
    merged.update({(r["run"], r["mode"]): r for r in rows})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"description": __doc__.splitlines()[0], "rows": list(merged.values())}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run folders (with results.json and checkpoint.pt)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--aux-limit", type=int, default=4500, help="at most this many auxiliary images (0: all)")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--l1-weight", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # shared machine: oversubscribed threads are slower, not faster
    settings = Settings(epochs=args.epochs, l1_weight=args.l1_weight)
    commit, load = _commit(), os.getloadavg()
    print(f"commit {commit}, load average {load}", flush=True)
    log: Log = lambda line: print(line, flush=True)  # noqa: E731
    rows = []
    for path in args.runs:
        for row in attack_run_dir(path, args.mode, args.aux_limit, settings, log):
            row.update(commit=commit, loadavg_before=list(load), loadavg_after=list(os.getloadavg()), time=time.strftime("%Y-%m-%dT%H:%M:%S"))
            rows.append(row)
            save([row])  # after each run, so an interrupted invocation keeps what it measured
    print(f"\n{'run':40s} {'mode':5s} {'indep.':>8s} {'ours':>8s} {'mean img':>8s} {'ind/ours':>8s} {'seconds':>8s}")
    for r in rows:
        print(f"{r['run']:40s} {r['mode']:5s} {r['independent_mse']:8.4f} {r['ours_mse']:8.4f} {r['mean_image_mse']:8.4f} {r['ratio_independent_to_ours']:8.2f} {r['seconds']:8.0f}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
