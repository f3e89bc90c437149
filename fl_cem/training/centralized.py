"""Centralized split training: client and server parts in one process, same step as federated.

The loop reads top to bottom like nanoGPT's: build everything (failing fast on bad input),
resume if a checkpoint exists, then per epoch: set the learning rate, run ``train_step`` over
the batches, evaluate, measure the conditional-entropy bound, checkpoint and log.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from fl_cem.config import Config
from fl_cem.data import BatchLoader, DataSplits, load_splits
from fl_cem.models.split import complexity
from fl_cem.reporting.board import Board
from fl_cem.reporting.progress import eta_line, progress
from fl_cem.reporting.run_dir import CHECKPOINT_LAYOUT, RunDir, RunFolderTaken, atomic_torch_save, environment, git_commit, refuse_other_kind
from fl_cem.training.client import Client
from fl_cem.training.schedule import Position
from fl_cem.training.server import Server
from fl_cem.training.setup import build_client, build_model, build_server, resolve_device, train_loader
from fl_cem.training.step import batch_seed, evaluate, train_step

EpochHook = Callable[[int, dict[str, Any]], None]


def eval_loader(data: Any, cfg: Config, device: torch.device) -> BatchLoader:
    """Fixed-order, unaugmented batches for evaluation and feature passes."""
    return BatchLoader(data, cfg.train.eval_batch_size, device, shuffle=False)


def measure_cem(client: Client, cfg: Config, splits: DataSplits, batches: BatchLoader, epoch: int) -> dict[str, float]:
    """Start epoch ``epoch``'s mixture on the training split's ``batches`` (:meth:`Client.epoch_start`) and report the bound.

    Called after the previous epoch's evaluation: with ``cem.lambda > 0`` the refit that epoch
    ``epoch`` trains with (Algorithm 1, lines 4-5) is computed once and reported on; with
    ``lambda = 0`` the mixture is fitted for measurement only, so the training step pays nothing.
    """
    if not client.epoch_start(epoch, batches, cfg.run.seed + epoch) and not cfg.cem.enabled:
        client.refit(batches, cfg.run.seed + epoch)
    return client.cem.report(math.prod(splits.shape), splits.pixel_var, splits.pixel_entropy)


def train_centralized(cfg: Config, *, on_epoch_end: EpochHook | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg`` centrally; returns the results dict also written to ``results.json``.

    Parameters
    ----------
    on_epoch_end
        Called after each finished (checkpointed) epoch with its record; sweeps and tests use it.
    """
    cfg = cfg.for_kind("centralized")
    if cfg.malicious.attack != "none":
        raise ValueError(f"malicious.attack = {cfg.malicious.attack!r} is a federated server's attack; centralized training has no server to be malicious")
    device = resolve_device(cfg.run.device)
    run = RunDir.for_config(cfg)
    splits = load_splits(cfg.data, cfg.run.seed)
    model = build_model(cfg, splits.shape, splits.num_classes, splits.mean, splits.std)
    sizes = {"encoder": complexity(model.encoder, model.input_shape), "decoder": complexity(model.decoder, model.smashed_shape)}
    client = build_client(cfg, model, splits.num_classes, len(splits.train), device)
    server = build_server(cfg, model, device)
    batches = train_loader(splits.train, cfg, splits.natural, device, cfg.run.seed)
    fit_batches = eval_loader(splits.train, cfg, device)  # the mixture's: unaugmented, fixed order
    history: list[dict[str, Any]] = []
    start = 0
    if cfg.run.resume and run.checkpoint_path.is_file():
        start, history = load_checkpoint(run, cfg, client, server)
        log(f"resuming {run.root} at epoch {start}/{cfg.train.epochs}")
    run.write_config(cfg)
    results: dict[str, Any] = {
        "kind": "centralized",
        "status": "running",
        "config": cfg.to_flat(),
        "commit": git_commit(),
        "environment": environment(),
        "model": {part: {"params": c.params, "macs": c.macs} for part, c in sizes.items()},
        "smashed_shape": list(model.smashed_shape),
        "epochs": history,
        **{k: v for k, v in run.read_results().items() if k == "attacks"},
    }
    run.write_results(results)
    board = Board(run.tb_dir)
    began = time.perf_counter()
    try:
        if not client.cem.fitted:
            client.epoch_start(0, fit_batches, cfg.run.seed)
        for epoch in range(start, cfg.train.epochs):
            batches.set_epoch(epoch)
            tick = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            for i, (x, y) in enumerate(progress(batches, f"epoch {epoch + 1}/{cfg.train.epochs}", total=len(batches))):
                metrics = train_step(client, server, x, y, batch_seed(cfg.run.seed, epoch, i), Position(epoch, i, len(batches)))
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0) + value.detach().double()
            train_time = time.perf_counter() - tick
            record = {"epoch": epoch + 1, "lr": client.schedule.lr(Position(epoch, len(batches) - 1, len(batches))), "train_time_s": train_time, **epoch_train_metrics(sums, len(batches))}
            record["val"] = evaluate(client, server, eval_loader(splits.val, cfg, device), cfg.run.seed)
            record["test"] = evaluate(client, server, eval_loader(splits.test, cfg, device), cfg.run.seed)
            record["cem"] = measure_cem(client, cfg, splits, fit_batches, epoch + 1)
            history.append(record)
            save_checkpoint(run, cfg, epoch + 1, client, server, history)
            run.write_results(results)
            log_epoch(board, record, client, splits, device)
            log(
                f"{eta_line(epoch + 1 - start, cfg.train.epochs - start, time.perf_counter() - began, 'epoch', start)} | "
                f"loss {record['train_loss']:.3f} | val acc {record['val']['accuracy']:.3f} | "
                f"test acc {record['test']['accuracy']:.3f} | H(x|z) rel {record['cem'].get('hxz_relative', float('nan')):.1f}"
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
        results["final"] = final_summary(history)
        board.hparams(cfg.to_flat(), {k: v for k, v in results["final"].items() if isinstance(v, float)})
    except BaseException as err:
        run.mark_failed(err, "centralized")
        raise
    finally:
        board.close()
    results["status"] = "finished"
    run.write_results(results)
    return results


def epoch_train_metrics(sums: dict[str, torch.Tensor], batches: int) -> dict[str, float]:
    """Epoch means from per-batch sums (one device sync per epoch, not per batch)."""
    count = float(sums.pop("count", torch.tensor(1.0)).item())
    out = {"train_loss": float(sums.pop("loss").item()) / batches, "train_accuracy": float(sums.pop("correct").item()) / count}
    out.update({key: float(value.item()) / batches for key, value in sums.items()})
    return out


def final_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Last epoch's figures plus the test accuracy at the best validation epoch (model selection)."""
    if not history:
        return {}
    best = max(history, key=lambda r: r["val"]["accuracy"])
    last = history[-1]
    return {
        "epochs": last["epoch"],
        "val_accuracy": last["val"]["accuracy"],
        "test_accuracy": last["test"]["accuracy"],
        "best_val_epoch": best["epoch"],
        "test_accuracy_at_best_val": best["test"]["accuracy"],
        "cem": last["cem"],
        "train_time_s": sum(r["train_time_s"] for r in history),
    }


def log_epoch(board: Board, record: dict[str, Any], client: Client, splits: DataSplits, device: torch.device) -> None:
    """Scalars for every figure of the epoch and an image grid of inputs and smashed channels."""
    step = record["epoch"]
    board.scalars("train", {k: v for k, v in record.items() if isinstance(v, float)}, step)
    for section in ("val", "test", "cem"):
        board.scalars(section, record[section], step)
    x = splits.test.images[:16].to(device).float() / 255
    z, _ = client.features([(x, torch.zeros(len(x)))])
    channel = z[:, :1]
    channel = (channel - channel.amin()) / (channel.amax() - channel.amin() + 1e-8)
    board.images("inputs", x, step)
    board.images("smashed_channel0", channel, step)


def save_checkpoint(run: RunDir, cfg: Config, next_epoch: int, client: Client, server: Server, history: list[dict[str, Any]]) -> None:
    """Everything needed to continue exactly: both parties' states (their one schema), RNG, history."""
    atomic_torch_save(
        {
            "kind": "centralized",
            "layout": CHECKPOINT_LAYOUT,
            "config": cfg.to_flat(),
            "epoch": next_epoch,
            "client": client.state_dict(),
            "server": server.state_dict(),
            "rng": torch.get_rng_state(),
            "history": history,
        },
        run.checkpoint_path,
    )


def load_checkpoint(run: RunDir, cfg: Config, client: Client, server: Server) -> tuple[int, list[dict[str, Any]]]:
    """Restore a checkpoint written by :func:`save_checkpoint`; refuses one from another config."""
    state = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True)
    refuse_other_kind(run, state, "centralized")
    changed = cfg.differences(state["config"])
    if changed:
        raise RunFolderTaken(
            f"{run.root} holds a checkpoint of a different config (keys differ: {', '.join(changed)}); "
            "choose another run.name or set run.resume = false to start over"
        )
    client.load_state_dict(state["client"])
    server.load_state_dict(state["server"])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]), list(state["history"])
