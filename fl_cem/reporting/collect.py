"""Read a sweep folder (or any folder of runs) into one record per run: status, config, numbers.

The numbers are the paper's Table 1 columns and ours, one value per run:

- ``accuracy``: test accuracy of the last epoch (federated: mean over the clients' encoders);
- ``<attack>_<mode>_{mse,psnr,ssim}``: reconstruction quality of each attack and attacker's
  data (Sec. 5.1; federated: mean over the attacked clients), per client the repeat the
  attacker's own validation favours (:func:`latest_attacks`; ``<attack>_<mode>_repeats`` how
  many it chose from), left out when an attack did not beat the mean image (``<attack>_<mode>_failed`` instead);
  ``<attack>_<mode>_mean_image`` is that baseline;
- ``hxz_relative``: ``-L_C`` (Eq. 3 with ``H(x) := 0``) of the last epoch; federated runs the mean
  over clients, and ``global_hxz_relative`` of the server's merged mixture where there is one;
- ``mse_lower_bound`` (and ``global_mse_lower_bound``): Theorem 1's bound estimate with the
  isotropic ``H(x)`` estimate, ``mse_lower_bound_full`` (and ``global_...``) with the
  full-covariance one, where training recorded it (docs/CEM.md);
- ``<attack>_<mode>_ratio`` and ``_ratio_full``: measured MSE over each bound estimate (mean
  over the attacked clients), and ``<attack>_<mode>_violated`` / ``_violated_full`` = 1 where
  an attack's MSE fell below that estimate (its ``H(x)`` estimate is too high); a failed attack
  keeps its flag but has no ratio;
- ``fsha_train_{mse,mean_image,failed}``: a hijacking server's (``malicious.attack = fsha``)
  inversion of the last round's intercepted batches, as that round scored it;
- ``train_s``, ``attack_s``: wall time of training and of the recorded attacks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_cem.config import Config
from fl_cem.reporting.run_dir import RunDir

QUALITY = ("mse", "psnr", "ssim")
BOUND_ESTIMATES = ("", "_full")
"""Suffixes of Theorem 1's bound estimates: isotropic and full-covariance ``H(x)`` (:mod:`fl_cem.cem.bound`)."""


@dataclass
class RunRecord:
    """One run (a sweep cell) as the report sees it."""

    name: str
    execution: str
    status: str
    """``done``, ``failed``, ``running`` (started, not finished) or ``pending`` (never started)."""
    config: dict[str, Any] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    grids: dict[str, Path] = field(default_factory=dict)
    """``"<attack>_<mode>"`` -> reconstruction grid PNG of the first victim."""
    error: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    """Machine, library versions and start date the run recorded (``run_dir.environment``)."""
    commit: str = ""

    @property
    def seed(self) -> int | None:
        seed = self.config.get("run.seed")
        return int(seed) if seed is not None else None


def run_values(results: dict[str, Any]) -> dict[str, float]:
    """The report's numbers of one ``results.json`` (see the module docstring); absent ones are left out."""
    final = results.get("final") or {}
    cem = final.get("cem", {})
    federated = results.get("kind") == "federated"
    raw = {
        "accuracy": final.get("test_accuracy_mean" if federated else "test_accuracy"),
        "hxz_relative": cem.get("mean_hxz_relative" if federated else "hxz_relative"),
        "mse_lower_bound": cem.get("mean_mse_lower_bound" if federated else "mse_lower_bound"),
        "global_hxz_relative": cem.get("global_hxz_relative"),
        "global_mse_lower_bound": cem.get("global_mse_lower_bound"),
        "mse_lower_bound_full": cem.get("mean_mse_lower_bound_full" if federated else "mse_lower_bound_full"),
        "global_mse_lower_bound_full": cem.get("global_mse_lower_bound_full"),
        "train_s": final.get("train_time_s"),
    }
    values = {key: float(value) for key, value in raw.items() if value is not None}
    latest = latest_attacks(results)
    by_pair: dict[str, list[dict[str, Any]]] = {}
    for (attack, mode, _), entry in latest.items():
        by_pair.setdefault(f"{attack}_{mode}", []).append(entry)
    for pair, entries in by_pair.items():
        baselines = [float(e["metrics"]["mse_mean_guess"]) for e in entries if "mse_mean_guess" in e["metrics"]]
        if baselines:
            values[f"{pair}_mean_image"] = sum(baselines) / len(baselines)
        values[f"{pair}_repeats"] = float(min(int(e["repeats"]) for e in entries))
        for suffix in BOUND_ESTIMATES:
            if any(bound_violated(e, suffix) for e in entries):
                values[f"{pair}_violated{suffix}"] = 1.0  # flagged in every report, failed attack or not
        if any(attack_failed(e) for e in entries):
            values[f"{pair}_failed"] = 1.0  # shown as failed; no figures, so no averages or gains either
            continue
        for quality in QUALITY:
            values[f"{pair}_{quality}"] = sum(float(e["metrics"][quality]) for e in entries) / len(entries)
        for suffix in BOUND_ESTIMATES:
            ratios = [float(e[f"mse_bound_ratio{suffix}"]) for e in entries if e.get(f"mse_bound_ratio{suffix}") is not None]
            if ratios:
                values[f"{pair}_ratio{suffix}"] = sum(ratios) / len(ratios)
    if latest:
        values["attack_s"] = sum(float(entry["repeats_time_s"]) for entry in latest.values())
    values.update(hijack_values(results))
    return values


def hijack_values(results: dict[str, Any]) -> dict[str, float]:
    """FSHA's figures of a federated run whose server hijacked: its last round's inversion score.

    The malicious server attacks while training, so its result is the run's, not an entry of
    ``attacks``; it is shown as the ``fsha`` attack in train mode (it inverts training batches).
    """
    rounds = results.get("rounds") or []
    hijack = rounds[-1].get("hijack") if rounds else None
    if not hijack or hijack.get("inversion_mse") is None:
        return {}
    values = {"fsha_train_mean_image": float(hijack["mean_image_mse"])}
    if hijack.get("failed"):
        values["fsha_train_failed"] = 1.0
    else:
        values["fsha_train_mse"] = float(hijack["inversion_mse"])
    return values


def attack_failed(entry: dict[str, Any]) -> bool:
    """An attack that did not beat the mean image (``failed``; older results: judged from their metrics)."""
    from fl_cem.attacks.evaluate import beats_mean_image

    if "failed" in entry:
        return bool(entry["failed"])
    metrics = dict(entry["metrics"])
    if not metrics.get("mse_mean_guess"):
        return False  # no baseline recorded: nothing to judge by
    metrics.setdefault("mse_to_mean_image", float(metrics["mse"]) / float(metrics["mse_mean_guess"]))
    return not beats_mean_image(metrics)


def bound_violated(entry: dict[str, Any], suffix: str = "") -> bool:
    """An attack whose MSE fell below a Theorem 1 estimate (``bound_violated<suffix>``; older results:
    judged from the recorded bound)."""
    flag = entry.get(f"bound_violated{suffix}")
    if flag is not None:
        return bool(flag)
    bound = entry.get(f"mse_lower_bound{suffix}")
    return bound is not None and float(entry["metrics"]["mse"]) < float(bound)


def latest_attacks(results: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The result the report reads per (attack, mode, victim).

    The same attack run again with the same ``attack.seed`` replaces the earlier result. Of the
    repeats (different ``attack.seed``), the attacker keeps the one its own held-out validation
    images favour (lowest ``fit.val_mse``, never the targets' MSE), as an attacker restarting an
    unstable training would; an attack with no validation measure cannot choose, so its repeat 0
    (lowest seed) stands.
    """
    repeats: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for entry in results.get("attacks", []):
        if entry.get("status") != "failed":  # a crashed attempt has no figures; an earlier success stands
            repeats.setdefault((entry["attack"], entry["mode"], entry["victim"]), {})[int(entry.get("attack_seed", 0))] = entry
    return {key: chosen_repeat(list(by_seed.values())) for key, by_seed in repeats.items()}


def chosen_repeat(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat an attacker keeps (see :func:`latest_attacks`), with how many repeats ran and their total time."""
    validated = all(entry.get("fit", {}).get("val_mse") is not None for entry in entries)

    def rank(entry: dict[str, Any]) -> tuple[float, int]:
        return (float(entry["fit"]["val_mse"]) if validated else 0.0, int(entry.get("attack_seed", 0)))

    best = min(entries, key=rank)
    return {**best, "repeats": len(entries), "repeats_time_s": sum(float(entry["time_s"]) for entry in entries)}


def attack_grids(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Reconstruction PNG of each (attack, mode), first victim; found beside the run if the folder moved."""
    grids: dict[str, Path] = {}
    for (attack, mode, _), entry in sorted(latest_attacks(results).items()):
        recorded = Path(entry.get("grid", ""))
        path = recorded if recorded.is_file() else folder / "attacks" / recorded.name
        if f"{attack}_{mode}" not in grids and path.is_file():
            grids[f"{attack}_{mode}"] = path
    return grids


def load_records(folder: str | Path) -> tuple[list[RunRecord], dict[str, Any]]:
    """Records of every cell of a sweep folder, and its manifest (``{}`` for a plain folder of runs).

    With a ``sweep.json`` manifest every cell is listed, run or not, labelled by its execution;
    otherwise every sub-folder holding a ``results.json`` is a run labelled by its kind.
    """
    folder = Path(folder)
    manifest_path = folder / "sweep.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest:
        cells = [(cell["name"], cell["execution"]) for cell in manifest["cells"]]
    else:
        cells = []
        for sub in sorted(p for p in folder.iterdir() if (p / "results.json").is_file()):
            cells.append((sub.name, RunDir(sub).read_results().get("kind", "centralized")))
    if not cells:
        raise FileNotFoundError(f"{folder} holds no sweep.json and no run folders with results.json")
    return [read_record(folder / name, name, execution) for name, execution in cells], manifest


def read_record(folder: Path, name: str, execution: str) -> RunRecord:
    """One cell's record from its ``results.json`` and ``status.json``."""
    results = RunDir(folder).read_results()
    status_path = folder / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    state = status.get("status") or ("done" if results.get("final") else "pending")
    # a key the run predates counts as its default (as for resuming, Config.differences), so a
    # key added since, such as a new attack's settings, does not split one setting into two rows
    config = {**Config.defaults_flat(), **results["config"]} if results.get("config") else {}
    record = RunRecord(
        name, execution, state, config, error=str(status.get("error", "")),
        environment=dict(results.get("environment", {})), commit=str(results.get("commit", "")),
    )
    if results:
        record.values = {k: v for k, v in run_values(results).items() if not math.isnan(v)}
        record.grids = attack_grids(results, folder)
    return record
