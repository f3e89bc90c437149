"""Run a sweep: every cell trains, is attacked and recorded; finished cells are skipped.

Each cell is an ordinary run folder ``<output-dir>/<sweep>/<cell>/`` (``results.json``,
checkpoint, TensorBoard logs, attack grids) plus ``status.json``: ``running``, ``done`` or
``failed`` with the traceback. A cell is finished when its ``results.json`` has a ``final``
summary and every requested (attack, mode) for every victim; a re-run skips it without loading
data. An interrupted cell resumes from its checkpoint (``run.resume``), and attacks already
recorded are not repeated. A failing cell is recorded and the sweep goes on. With an
``archive`` (:mod:`fl_cem.experiments.spec`) each finished cell is also copied there, and a cell
found finished there is restored instead of trained again: the sweep resumes across machines
and sessions from what was committed.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fl_cem.attacks.run import attack_run
from fl_cem.config import Config
from fl_cem.experiments.spec import AttackSpec, Cell, SweepSpec
from fl_cem.federated.launch import run_federated
from fl_cem.reporting.run_dir import RunDir, atomic_write_bytes
from fl_cem.training.centralized import train_centralized

Log = Callable[[str], None]


@dataclass
class SweepSummary:
    """Cell counts of one ``run_sweep`` call."""

    ran: int = 0
    skipped: int = 0
    failed: int = 0


def run_sweep(spec: SweepSpec, log: Log = print, only: Sequence[str] = ()) -> SweepSummary:
    """Run every cell of ``spec`` that is not finished; write the manifest the report reads.

    Parameters
    ----------
    spec
        The parsed sweep (:func:`fl_cem.experiments.spec.load_sweep`).
    log
        Receives the progress lines (cell i/n, elapsed, ETA over the cells that still run).
    only
        Shell patterns (``fnmatch``) of cell names to run, to split a sweep across machines
        that share the sweep folder; empty runs all. The manifest always lists every cell.

    Returns
    -------
    SweepSummary
        How many cells ran, were skipped as finished, or failed.
    """
    cells = select_cells(spec.cells(), only)
    idle = {cell.name: reason for cell in cells if (reason := _cem_idle_reason(cell))}
    if idle:
        name, reason = next(iter(idle.items()))
        raise ValueError(f"sweep {spec.name}: {len(idle)} cell(s) where CEM cannot act, e.g. {name}: {reason}; train longer or use cem.variant = 'paper'")
    spec.root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(spec.root / "sweep.json", json.dumps(spec.manifest(), indent=2).encode())
    if spec.archive is not None:
        for cell in cells:
            if restore_cell(cell, spec.root, spec.archive, spec.attacks_for(cell)):
                log(f"{cell.name}: restored from {spec.archive}")
    pending = {cell.name for cell in cells if not cell_finished(spec.root / cell.name, spec.attacks_for(cell))}
    log(f"sweep {spec.name}: {len(cells)} cells, {len(cells) - len(pending)} finished, {len(pending)} to run in {spec.root}")
    summary = SweepSummary()
    began = time.perf_counter()
    for index, cell in enumerate(cells, start=1):
        head = f"[{index}/{len(cells)}] {cell.name}"
        if cell.name not in pending:
            summary.skipped += 1
            log(f"{head}: finished, skipped")
            continue
        done = summary.ran + summary.failed
        elapsed = time.perf_counter() - began
        eta = f"{elapsed / done * (len(pending) - done):.0f}s" if done else "unknown"
        log(f"{head}: running ({done}/{len(pending)} run so far, elapsed {elapsed:.0f}s, ETA {eta})")
        status = run_cell(cell, spec.root, spec.attacks_for(cell), _prefixed(log, f"  {head} "))
        if status["status"] == "done":
            summary.ran += 1
            log(f"{head}: done in {status['wall_s']:.0f}s")
            if spec.archive is not None:
                archive_cell(spec.root / cell.name, spec.archive / cell.name)
        else:
            summary.failed += 1
            log(f"{head}: FAILED in {status['wall_s']:.0f}s at {status['stage']}: {status['error']}")
    log(f"sweep {spec.name}: {summary.ran} ran, {summary.skipped} skipped, {summary.failed} failed, {time.perf_counter() - began:.0f}s")
    return summary


def _cem_idle_reason(cell: Cell) -> str | None:
    """Why CEM cannot act in ``cell`` (:meth:`Config.cem_idle_reason`); a cell whose config is
    invalid is left to fail on its own and be recorded in its status, as any failing cell is."""
    try:
        cfg = Config.from_flat(cell.overrides)
    except ValueError:
        return None
    return cfg.cem_idle_reason(cell.execution.kind)


def _prefixed(log: Log, prefix: str) -> Log:
    """The cell's own lines (epochs, attacks) under its progress line."""
    return lambda line: log(prefix + line)


def select_cells(cells: list[Cell], only: Sequence[str]) -> list[Cell]:
    """The cells whose names match one of the ``fnmatch`` patterns (all of them for no pattern)."""
    return [cell for cell in cells if not only or any(fnmatch.fnmatchcase(cell.name, pattern) for pattern in only)]


def run_cell(cell: Cell, root: Path, attacks: tuple[AttackSpec, ...], log: Log = print) -> dict[str, Any]:
    """Train (unless trained), run the missing attacks, and write ``status.json``.

    An exception is recorded, not raised, so the sweep goes on (the cell is retried on the next
    run); an interruption (Ctrl-C) propagates and leaves the cell ``running``, to resume later.

    Returns
    -------
    dict
        The status written: ``status`` (``done``/``failed``), ``stage``, ``wall_s``, and on
        failure ``error`` and ``traceback``.
    """
    run = RunDir(root / cell.name)
    status: dict[str, Any] = {"cell": cell.name, "status": "running", "stage": "config", "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_status(run, status)
    tick = time.perf_counter()
    try:
        cfg = Config.from_flat({**cell.overrides, "run.output-dir": str(root), "run.name": cell.name})
        results = run.read_results()
        check_same_config(results, cfg)
        missing = missing_attacks(results, attacks)
        if results.get("final") and missing and not run.checkpoint_path.is_file():
            # a cell restored from its archive has no model to attack: train it again, keeping the
            # restored results aside (their attacks were measured on the model being replaced)
            log(f"no checkpoint to run {', '.join(f'{a.attack} {a.mode}' for a in missing)} on: training again (restored results kept in {run.previous_results_path.name})")
            run.results_path.replace(run.previous_results_path)
            results = {}
        if not results.get("final"):
            status["stage"] = "train"
            write_status(run, status)
            if cell.execution.kind == "federated":
                results = run_federated(cfg, client_cpus=cell.execution.client_cpus)
            else:
                results = train_centralized(cfg, log=log)
        for attack in missing_attacks(results, attacks):
            status["stage"] = f"attack {attack.attack} {attack.mode}"
            write_status(run, status)
            for victim in attack.victims if results.get("kind") == "federated" and attack.victims else [None]:
                for outcome in attack_run(str(run.root), attack.attack, attack.mode, victim, attack.overrides):
                    log(f"{attack.attack} {attack.mode} {outcome['victim']}: MSE {outcome['metrics']['mse']:.4f}")
        status.update(status="done", stage="finished")
    except Exception as err:
        status.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    status["wall_s"] = time.perf_counter() - tick
    write_status(run, status)
    return status


def cell_finished(folder: Path, attacks: tuple[AttackSpec, ...]) -> bool:
    """A ``final`` summary and every requested attack recorded for every victim."""
    results = RunDir(folder).read_results()
    return bool(results.get("final")) and not missing_attacks(results, attacks)


def missing_attacks(results: dict[str, Any], attacks: tuple[AttackSpec, ...]) -> list[AttackSpec]:
    """The requested attacks not yet recorded for each of their victims (the centralized client,
    or the federated clients the attack names, every client by default)."""
    recorded: dict[tuple[str, str, int], set[str]] = {}
    for entry in results.get("attacks", []):
        if entry.get("status") != "failed":
            recorded.setdefault((entry["attack"], entry["mode"], int(entry.get("attack_seed", 0))), set()).add(entry["victim"])
    return [a for a in attacks if not victim_names(results, a) <= recorded.get((a.attack, a.mode, a.repeat), set())]


def victim_names(results: dict[str, Any], attack: AttackSpec) -> set[str]:
    """The victims ``attack`` must be recorded for, named as :func:`fl_cem.attacks.run.load_victims` names them."""
    if results.get("kind") != "federated":
        return {"centralized"}
    clients = attack.victims or range(int(results.get("clients", 1)))
    return {f"client {pid}" for pid in clients}


ARCHIVED = ("results.json", "config.toml")


def archive_cell(folder: Path, archive: Path) -> None:
    """Copy a finished cell's results, config and attack grids (small, committable) to ``archive``."""
    (archive / "attacks").mkdir(parents=True, exist_ok=True)
    for name in ARCHIVED:
        atomic_write_bytes(archive / name, (folder / name).read_bytes())
    for grid in sorted((folder / "attacks").glob("*.png")):
        shutil.copyfile(grid, archive / "attacks" / grid.name)


def restore_cell(cell: Cell, root: Path, archive: Path, attacks: tuple[AttackSpec, ...]) -> bool:
    """Restore a cell from its archived copy when it has no run folder here and the copy is
    finished with this cell's config; a stale copy (the sweep file changed) is left alone."""
    source, folder = archive / cell.name, root / cell.name
    if (folder / "results.json").is_file() or not cell_finished(source, attacks):
        return False
    cfg = Config.from_flat({**cell.overrides, "run.output-dir": str(root), "run.name": cell.name})
    if cfg.differences(RunDir(source).read_results().get("config", {})):
        return False
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return True


def check_same_config(results: dict[str, Any], cfg: Config) -> None:
    """Refuse results of another config under this cell's name (the sweep file changed since)."""
    if not results.get("config"):
        return
    changed = cfg.differences(results["config"])
    if changed:
        raise ValueError(
            f"{cfg.run.output_dir}/{cfg.run.name} holds results of a different config (keys differ: {', '.join(changed)}); "
            "delete that folder or give the sweep another name"
        )


def write_status(run: RunDir, status: dict[str, Any]) -> None:
    atomic_write_bytes(run.root / "status.json", json.dumps(status, indent=2).encode())
