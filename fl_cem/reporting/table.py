"""Aggregate run records into the paper's Table 1 shape: rows over seeds, averages w/o and w/ CEM.

A row is one setting run with several seeds: mean and sample standard deviation over the seeds,
with n stated (airbench's "mean over n trials"). Which config keys make a row is read from the
runs themselves, so the report works for any grid:

- the **method** is ``defense.name`` together with every key that is a function of it within
  each execution (e.g. ``model.bottleneck = 0`` and ``noise.sigma = 0`` of the No_defense row,
  or a warm-up step count that differs between centralized and federated runs);
- the **CEM setting** is ``cem.lambda`` (off when 0, Eq. 8) with the keys that are a function of
  it within each execution (e.g. ``cem.variant`` set only with lambda > 0);
- every other key that varies (``noise.sigma`` of Fig. 4, ``model.cut``) is a column of its own;
  keys that are a function of the execution (clients, partitioner) are its label's business.

The paper's last two rows average over the methods that have both a row without and with CEM
(No_defense is in neither: 88.91 = mean of the seven defenses' accuracies), per execution and
per value of the other keys. The gain is the relative change of each MSE, PSNR, SSIM, bound and
time, and the difference of the accuracy and of H(x|z) (a log quantity that can be negative).
``gain_train_mse`` and ``gain_infer_mse`` average the relative MSE gains over the attacks: the
paper's "average increase in reconstruction MSE of 24.0% for training data and 12.9% for
inference data" (Sec. 5.2, from its rounded averages).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

from fl_cem.config import VERDICT_KEYS
from fl_cem.reporting.collect import BOUND_ESTIMATES, QUALITY, RunRecord

METHOD_KEY = "defense.name"
CEM_KEY = "cem.lambda"
# Keys that never define a row: where and how a run ran, and the seed rows average over.
IGNORED_KEYS = ("run.name", "run.output-dir", "run.seed", "run.device", "run.resume", *VERDICT_KEYS)
FIXED_COLUMNS = (
    "accuracy", "hxz_relative", "global_hxz_relative", "mse_lower_bound", "global_mse_lower_bound",
    "mse_lower_bound_full", "global_mse_lower_bound_full", "train_s", "attack_s",
)
DIFFERENCE_COLUMNS = ("accuracy", "hxz_relative", "global_hxz_relative")
"""Columns whose gain is a difference; all others get a relative change."""


@dataclass(frozen=True)
class Roles:
    """How the varying config keys are read: method, CEM setting, or a column of their own."""

    method: tuple[str, ...]
    cem: tuple[str, ...]
    other: tuple[str, ...]


@dataclass
class Row:
    """One setting over its seeds."""

    execution: str
    method: str
    lam: float
    cem: str
    """``""`` without CEM, else ``λ=16`` and any CEM keys that vary with it."""
    other: dict[str, Any]
    cells: list[str]
    seeds: list[int | None]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.cells)

    @property
    def label(self) -> str:
        """``bottleneck`` or ``bottleneck+CEM``, the paper's row names."""
        return f"{self.method}+CEM" if self.lam > 0 else self.method


@dataclass
class Average:
    """The paper's "Average w/o CEM" and "Average w/ CEM" rows of one block, and the gain."""

    execution: str
    other: dict[str, Any]
    lam: float
    cem: str
    methods: list[str]
    without: dict[str, float]
    with_cem: dict[str, float]
    gain: dict[str, float]
    gain_train_mse: float
    gain_infer_mse: float


@dataclass
class Table:
    """Rows, averages and the columns they carry, in display order."""

    columns: list[str]
    roles: Roles
    executions: list[str]
    rows: list[Row]
    averages: list[Average]


def assign_roles(records: Sequence[RunRecord]) -> Roles:
    """Split the config keys that vary across ``records`` into method, CEM and other keys."""
    configs = [r.config for r in records]
    keys = [k for k in configs[0] if k not in IGNORED_KEYS] if configs else []
    varying = [k for k in keys if len({_hashable(c.get(k)) for c in configs}) > 1]
    executions = [r.execution for r in records]
    by_execution = [k for k in varying if _depends_on(configs, k, executions)]
    candidates = [k for k in varying if k not in (METHOD_KEY, CEM_KEY) and k not in by_execution]
    by_method = list(zip(executions, (c.get(METHOD_KEY) for c in configs)))
    method = [METHOD_KEY] + [k for k in candidates if _depends_on(configs, k, by_method)]
    by_cem = list(zip(executions, (c.get(CEM_KEY) for c in configs)))
    cem = [CEM_KEY] + [k for k in candidates if k not in method and _depends_on(configs, k, by_cem)]
    other = [k for k in varying if k not in method and k not in cem and k not in by_execution]
    return Roles(tuple(method), tuple(cem), tuple(other))


def build_table(records: Sequence[RunRecord]) -> Table:
    """Rows (mean, std over seeds) and paired averages of the finished runs in ``records``.

    Parameters
    ----------
    records
        Runs; only those with status ``done`` enter the table.

    Returns
    -------
    Table
        Rows ordered by execution, other keys, method (first appearance) and lambda; one
        :class:`Average` per (execution, other keys, lambda > 0) with at least one paired method.
    """
    done = [r for r in records if r.status == "done" and r.config]
    roles = assign_roles(done)
    executions = list(dict.fromkeys(r.execution for r in records))
    groups: dict[tuple[Hashable, ...], list[RunRecord]] = {}
    for record in done:
        groups.setdefault(_row_key(record, roles), []).append(record)
    methods = list(dict.fromkeys(r.config.get(METHOD_KEY) for r in done))
    rows = [_row(runs, roles) for runs in groups.values()]
    rows.sort(key=lambda row: (executions.index(row.execution), _sortable(row.other), methods.index(row.method), row.lam, row.cem))
    columns = _columns(done)
    return Table(columns, roles, executions, rows, _averages(rows, columns))


def _row(runs: list[RunRecord], roles: Roles) -> Row:
    first = runs[0]
    lam = float(first.config.get(CEM_KEY, 0.0))
    cem = ""
    if lam > 0:
        cem = ", ".join([f"λ={lam:g}", *(f"{k.rsplit('.', 1)[-1]}={first.config[k]}" for k in roles.cem[1:])])
    row = Row(
        execution=first.execution,
        method=str(first.config.get(METHOD_KEY)),
        lam=lam,
        cem=cem,
        other={k: first.config.get(k) for k in roles.other},
        cells=[r.name for r in runs],
        seeds=[r.seed for r in runs],
    )
    failed = {k.removesuffix("_failed") for r in runs for k in r.values if k.endswith("_failed")}
    figures = (*QUALITY, *(f"ratio{suffix}" for suffix in BOUND_ESTIMATES))
    hidden = {f"{pair}_{figure}" for pair in failed for figure in figures}
    for column in {k for r in runs for k in r.values}:
        if column in hidden:
            continue  # one seed's attack failed: the row's figure would hide it, so the row has none
        samples = [r.values[column] for r in runs if column in r.values]
        row.mean[column], row.std[column] = mean_std(samples)
        row.count[column] = len(samples)
    return row


def mean_std(samples: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one sample is NaN, not 0."""
    mean = statistics.fmean(samples) if samples else math.nan
    if len(samples) < 2 or not all(math.isfinite(s) for s in samples):
        return mean, math.nan
    return mean, statistics.stdev(samples)


def gain(column: str, without: float, with_cem: float) -> float:
    """Difference for accuracy and H(x|z), relative change for everything else (NaN from 0)."""
    if column in DIFFERENCE_COLUMNS:
        return with_cem - without
    return (with_cem - without) / abs(without) if without != 0 else math.nan


def _averages(rows: list[Row], columns: list[str]) -> list[Average]:
    blocks: dict[tuple[Hashable, ...], list[Row]] = {}
    for row in rows:
        blocks.setdefault((row.execution, _sortable(row.other)), []).append(row)
    out = []
    for block in blocks.values():
        without = {row.method: row for row in block if row.lam == 0}
        for lam, cem in dict.fromkeys((row.lam, row.cem) for row in block if row.lam > 0):
            with_cem = {row.method: row for row in block if row.lam == lam and row.cem == cem}
            paired = [m for m in with_cem if m in without]
            if not paired:
                continue
            avg_off, avg_on, gains = {}, {}, {}
            for column in columns:
                both = [m for m in paired if column in without[m].mean and column in with_cem[m].mean]
                if not both:
                    continue
                avg_off[column] = statistics.fmean(without[m].mean[column] for m in both)
                avg_on[column] = statistics.fmean(with_cem[m].mean[column] for m in both)
                gains[column] = gain(column, avg_off[column], avg_on[column])
            out.append(
                Average(
                    execution=block[0].execution,
                    other=block[0].other,
                    lam=lam,
                    cem=cem,
                    methods=paired,
                    without=avg_off,
                    with_cem=avg_on,
                    gain=gains,
                    gain_train_mse=_mode_gain(gains, "train"),
                    gain_infer_mse=_mode_gain(gains, "infer"),
                )
            )
    return out


def _mode_gain(gains: dict[str, float], mode: str) -> float:
    """Mean relative MSE gain over the attacks of one attacker's-data mode."""
    values = [v for k, v in gains.items() if k.endswith(f"_{mode}_mse")]
    return statistics.fmean(values) if values else math.nan


def _columns(records: Sequence[RunRecord]) -> list[str]:
    """Accuracy, each attack's MSE/PSNR/SSIM (decoder, GAN, others; train before infer), its MSE over
    each Theorem 1 estimate, then ours."""
    present = {k for r in records for k in r.values}
    pairs = sorted({k.rsplit("_", 1)[0] for k in present if k.rsplit("_", 1)[-1] in (*QUALITY, "failed")}, key=_pair_order)
    shown = [f"{pair}_{q}" for q in QUALITY for pair in pairs if f"{pair}_{q}" in present or f"{pair}_failed" in present]
    ratios = [f"{pair}_ratio{s}" for s in BOUND_ESTIMATES for pair in pairs if f"{pair}_ratio{s}" in present]
    columns = ["accuracy"] + shown + ratios
    return columns + [c for c in FIXED_COLUMNS[1:] if c in present]


def ratio_pair(column: str) -> str:
    """``<attack>_<mode>`` of an MSE / bound estimate column, else ``""``."""
    pair, ratio, suffix = column.partition("_ratio")
    return pair if ratio and suffix in BOUND_ESTIMATES else ""


def _pair_order(pair: str) -> tuple[int, str, int]:
    attack, mode = pair.rsplit("_", 1)
    rank = {"decoder": 0, "gan": 1}.get(attack, 2)
    return rank, attack, 0 if mode == "train" else 1


def _row_key(record: RunRecord, roles: Roles) -> tuple[Hashable, ...]:
    keys = roles.method + roles.cem + roles.other
    return (record.execution, *(_hashable(record.config.get(k)) for k in keys))


def _depends_on(configs: Sequence[dict[str, Any]], key: str, by: Sequence[Hashable]) -> bool:
    """Whether ``key`` takes one value per value of ``by`` (a function of it) while ``by`` varies."""
    seen: dict[Hashable, Hashable] = {}
    for config, value in zip(configs, by):
        here = _hashable(config.get(key))
        if seen.setdefault(_hashable(value), here) != here:
            return False
    return len(seen) > 1


def _sortable(values: dict[str, Any]) -> tuple[tuple[str, float, str], ...]:
    """A sort and grouping key over other-key values: numbers by value, strings by text."""
    return tuple((k, float(v) if isinstance(v, (int, float)) else 0.0, str(v)) for k, v in values.items())


def _hashable(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value
