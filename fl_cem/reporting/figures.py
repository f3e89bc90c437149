"""The paper's figures for a sweep, as PNG files (matplotlib, no display needed).

- Fig. 3: attack MSE against H(x|z) per run, one series per execution and lambda, with the
  exponential fit and its correlation (:mod:`fl_cem.reporting.fit`) beside Theorem 1's rate;
- Fig. 4a/4b: accuracy against attack MSE, one curve per method and CEM setting through the
  values of ``noise.sigma`` (4a), and one per method through the values of ``cem.lambda`` (4b);
- Fig. 5: the attacks' reconstruction grids per defense, without and with CEM, side by side.

Figures are built on :class:`matplotlib.figure.Figure` directly, so no pyplot state or GUI
backend is involved and the functions are safe to call from tests and sweeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imread

from fl_cem.reporting.collect import RunRecord
from fl_cem.reporting.fit import ExpFit, exponential_fit
from fl_cem.reporting.table import CEM_KEY, Row, Table

SIGMA_KEY = "noise.sigma"
PREFERRED_MSE = "decoder_train_mse"
"""Fig. 3 and 4 use the decoder attack with the training data (Sec. 3.5: "full access")."""
MIN_FIT_POINTS = 3


def mse_column(columns: Sequence[str]) -> str | None:
    """The MSE the figures plot: the decoder's on training data, else the first recorded."""
    mses = [c for c in columns if c.endswith("_mse") and c != "mse_lower_bound" and not c.startswith("global_")]
    return PREFERRED_MSE if PREFERRED_MSE in mses else (mses[0] if mses else None)


@dataclass(frozen=True)
class EntropyFit:
    """One Fig. 3 series: the fit of the measured MSEs, and the rate Theorem 1 predicts."""

    measured: ExpFit
    theorem_rate: float | None
    """``2 / d_x``, read off the runs' bound estimates (``None`` without two of them)."""


def plot_mse_vs_entropy(records: Sequence[RunRecord], column: str, path: Path) -> dict[str, EntropyFit]:
    """Fig. 3: one point per finished run, one exponential fit per series; returns the fits.

    A series is one execution at one ``cem.lambda``: the paper's Fig. 3 fixes lambda = 16 and
    varies the noise, and pooling lambdas would mix two ways of moving H(x|z). Each series also
    draws Theorem 1's bound estimate of its runs (dotted), whose slope is the theorem's rate
    ``2 / d_x``, so the measured slope can be read against it. Runs whose H(x|z) is not finite
    (``noise.sigma = 0`` makes ``L_C`` infinite) or whose MSE is missing are left out. A series
    with fewer than three distinct entropies gets no fit (a line through two points says nothing
    about the relation).
    """
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    fits: dict[str, EntropyFit] = {}
    for index, (name, series) in enumerate(_entropy_series(records, column).items()):
        xs, ys = (np.array([point[i] for point in series]) for i in (0, 1))
        color = f"C{index}"
        ax.scatter(xs, ys, color=color, label=f"{name} (n={len(xs)})")
        if len(set(xs.tolist())) < MIN_FIT_POINTS:
            continue
        grid = np.linspace(xs.min(), xs.max(), 100)
        bounds = [(x, b) for x, _, b in series if b is not None and b > 0]
        theorem_rate = exponential_fit(*zip(*bounds)).rate if len({x for x, _ in bounds}) >= 2 else None
        fit = fits[name] = EntropyFit(exponential_fit(xs, ys), theorem_rate)
        ax.plot(grid, fit.measured(grid), color=color, linestyle="--", label=f"fit: rate {fit.measured.rate:.3g}/nat, r(H, log MSE) = {fit.measured.r_log:.2f}")
        if bounds:
            bx, by = (np.array(v) for v in zip(*sorted(bounds)))
            ax.plot(bx, by, color=color, linestyle=":", label=f"Theorem 1 estimate: rate 2/d_x = {theorem_rate:.3g}/nat" if theorem_rate else "Theorem 1 estimate")
    ax.set_yscale("log")
    ax.set_xlabel("relative H(x|z) = -L_C (nats, Eq. 3)")
    ax.set_ylabel(f"{_pretty(column)}")
    ax.set_title("Reconstruction MSE vs conditional entropy (Fig. 3)")
    if fits or ax.collections:
        ax.legend(fontsize=7)
    _save(fig, path)
    return fits


def _entropy_series(records: Sequence[RunRecord], column: str) -> dict[str, list[tuple[float, float, float | None]]]:
    """``(H(x|z), MSE, bound estimate)`` of every plottable run, keyed by execution and lambda."""
    series: dict[str, list[tuple[float, float, float | None]]] = {}
    for record in records:
        hxz, mse = record.values.get("hxz_relative", math.nan), record.values.get(column, 0.0)
        if record.status != "done" or not math.isfinite(hxz) or not mse > 0:
            continue
        lam = float(record.config.get(CEM_KEY, 0.0))
        name = f"{record.execution}, " + (f"λ={lam:g}" if lam else "no CEM")
        series.setdefault(name, []).append((hxz, mse, record.values.get("mse_lower_bound")))
    return series


def plot_accuracy_vs_mse(table: Table, column: str, folder: Path) -> list[Path]:
    """Fig. 4a (curves through sigma) per execution, and Fig. 4b (through lambda) where lambda varies."""
    paths = []
    for execution in table.executions:
        rows = [row for row in table.rows if row.execution == execution and column in row.mean and "accuracy" in row.mean]
        if not rows:
            continue
        name = _file_part(execution)
        if len({row.other.get(SIGMA_KEY) for row in rows}) >= 2:  # a dimension that was not varied gets no figure
            title = f"{execution}: accuracy vs MSE, sweeping σ (Fig. 4a)"
            paths.append(_curves(rows, column, SIGMA_KEY, "σ", folder / f"fig4a_accuracy_vs_mse_sigma_{name}.png", title))
        if len({row.lam for row in rows}) >= 2:
            title = f"{execution}: accuracy vs MSE, sweeping λ (Fig. 4b)"
            paths.append(_curves(rows, column, CEM_KEY, "λ", folder / f"fig4b_accuracy_vs_mse_lambda_{name}.png", title))
    return paths


def _curves(rows: list[Row], column: str, sweep_key: str, symbol: str, path: Path, title: str) -> Path:
    """One line per series (rows equal but for ``sweep_key``), points in order of its value, ends labelled."""
    series: dict[str, list[tuple[float, Row]]] = {}
    for row in rows:
        value = row.lam if sweep_key == CEM_KEY else row.other.get(sweep_key)
        rest = {k: v for k, v in row.other.items() if k != sweep_key}
        label = row.method if sweep_key == CEM_KEY else row.label + (f" ({row.cem})" if row.cem else "")
        label += "".join(f", {k.rsplit('.', 1)[-1]}={v}" for k, v in rest.items())
        series.setdefault(label, []).append((float(value) if value is not None else math.nan, row))
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for label, points in series.items():
        points.sort(key=lambda p: p[0])
        xs = [p[1].mean[column] for p in points]
        ys = [100 * p[1].mean["accuracy"] for p in points]
        xerr = [_zero_nan(p[1].std.get(column, math.nan)) for p in points]
        yerr = [100 * _zero_nan(p[1].std.get("accuracy", math.nan)) for p in points]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=2, label=label)
        # The two ends are labelled on opposite sides: with few points they often sit close together.
        for end, offset, align in ((0, (-4, -9), "right"), (len(points) - 1, (4, 4), "left")):
            value = points[end][0]
            if not math.isnan(value) and (end == 0 or len(points) > 1):
                ax.annotate(f"{symbol}={value:g}", (xs[end], ys[end]), fontsize=6, textcoords="offset points", xytext=offset, ha=align)
    ax.set_xlabel(_pretty(column))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_reconstructions(table: Table, records: Sequence[RunRecord], folder: Path) -> list[Path]:
    """Fig. 5: per execution and attack, a grid of reconstruction PNGs, methods by CEM setting.

    Each panel is the attack's own PNG (originals above, reconstructions below) of the row's
    first seed, so the figure shows exactly the images the metrics were computed on.
    """
    by_name = {r.name: r for r in records}
    paths = []
    for execution in table.executions:
        rows = [row for row in table.rows if row.execution == execution]
        pairs = sorted({pair for row in rows for pair in by_name[row.cells[0]].grids})
        for pair in pairs:
            settings = list(dict.fromkeys((row.lam, row.cem) for row in sorted(rows, key=lambda r: r.lam)))
            lines = list(dict.fromkeys((row.method, tuple(row.other.items())) for row in rows))
            cells = {((row.method, tuple(row.other.items())), (row.lam, row.cem)): by_name[row.cells[0]] for row in rows}
            panels = {key: record.grids.get(pair) for key, record in cells.items()}
            if not any(panels.values()):
                continue
            fig = Figure(figsize=(3.2 * len(settings), 1.3 * len(lines) + 0.6))
            axes = fig.subplots(len(lines), len(settings), squeeze=False)
            for i, line in enumerate(lines):
                for j, setting in enumerate(settings):
                    ax = axes[i][j]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    image = panels.get((line, setting))
                    if image is not None:
                        ax.imshow(imread(image))
                    else:
                        note = missing_panel_note(cells.get((line, setting)), pair)
                        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=7, color="gray", transform=ax.transAxes)
                        for spine in ax.spines.values():
                            spine.set_visible(False)
                    if i == 0:
                        ax.set_title("without CEM" if setting[0] == 0 else f"with CEM ({setting[1]})", fontsize=8)
                    if j == 0:
                        other = "".join(f"\n{k.rsplit('.', 1)[-1]}={v}" for k, v in line[1])
                        ax.set_ylabel(f"{line[0]}{other}", fontsize=7)
            fig.suptitle(f"{execution}: {_pretty(pair + '_mse').replace(' MSE', '')} reconstructions (top: originals)", fontsize=9)
            paths.append(_save(fig, folder / f"fig5_reconstructions_{_file_part(execution)}_{pair}.png"))
    return paths


def missing_panel_note(record: RunRecord | None, pair: str) -> str:
    """What a Fig. 5 panel without an image says: why the ``pair`` (``decoder_train``) grid is absent.

    A sweep may exclude a cell (No_defense with CEM), run an attack on chosen cells only
    (``cem_stats`` needs CEM's statistics), or hold cells archived before their grids were kept,
    which have the attack's figures but no image.
    """
    if record is None:
        return "no such cell"
    if any(key.startswith(f"{pair}_") for key in record.values):
        return "image not archived"
    return "not attacked"


def _pretty(column: str) -> str:
    """``decoder_train_mse`` -> ``decoder MSE (train)``."""
    parts = column.rsplit("_", 2)
    if len(parts) == 3 and parts[1] in ("train", "infer"):
        return f"{parts[0]} {parts[2].upper()} ({parts[1]})"
    return column


def _zero_nan(value: float) -> float:
    """Error bars of a single seed: none drawn (its deviation is undefined, not zero)."""
    return 0.0 if math.isnan(value) else value


def _file_part(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in text)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def figure_summary(fits: dict[str, EntropyFit]) -> dict[str, Any]:
    """The Fig. 3 fits as JSON-ready numbers."""
    return {
        name: {
            "log_scale": fit.measured.log_scale,
            "rate": fit.measured.rate,
            "r_log": fit.measured.r_log,
            "r_linear": fit.measured.r_linear,
            "n": fit.measured.n,
            "theorem_rate": fit.theorem_rate,
        }
        for name, fit in fits.items()
    }
