"""``fl-cem report runs/<sweep>``: the paper's tables and figures for the runs of a sweep.

Writes into ``<sweep>/report/``::

    report.md        Table 1 per execution (with the average rows and the CEM gain), PSNR/SSIM,
                     centralized against federated, the Fig. 3 fit, failed cells, figure links
    rows.csv         one line per row: mean and std over seeds of every column, n
    averages.csv     the "Average w/o CEM", "Average w/ CEM" and gain lines per block
    cells.csv        one line per cell, status and raw values (failed cells with their error)
    report.json      all of the above, machine-readable (non-finite numbers as null)
    fig*.png         Fig. 3, 4a/4b, 5 (:mod:`fl_cem.reporting.figures`)
    tb_hparams/      TensorBoard HParams view: one run per cell, its keys and final numbers
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

from fl_cem.reporting.board import write_hparams
from fl_cem.reporting.collect import RunRecord, load_records
from fl_cem.reporting.figures import EntropyFit, figure_summary, mse_column, plot_accuracy_vs_mse, plot_mse_vs_entropy, plot_reconstructions
from fl_cem.reporting.table import Average, Row, Table, build_table, ratio_pair

HEADERS = {
    "accuracy": "Acc. (%)",
    "hxz_relative": "H(x|z) rel.",
    "global_hxz_relative": "H(x|z) rel. (global)",
    "mse_lower_bound": "MSE bound est.",
    "global_mse_lower_bound": "MSE bound est. (global)",
    "mse_lower_bound_full": "MSE bound est. (full cov.)",
    "global_mse_lower_bound_full": "MSE bound est. (full cov., global)",
    "train_s": "Train s",
    "attack_s": "Attack s",
}
ATTACK_NAMES = {"decoder": "Dec.", "gan": "GAN", "fora": "FORA (black-box)", "unsplit": "UnSplit (black-box)", "fsha": "FSHA (malicious server)"}
NOTES = """\
Values are mean ± sample standard deviation over seeds; n is the number of seeds (no ± for n = 1).
Acc.: test accuracy after the last epoch (federated: mean over the clients' encoders).
MSE: per-pixel reconstruction MSE in [0, 1] pixel space of held-out targets (paper Sec. 5.1),
per attack, with the attacker's data from the training split (train) or the test split (infer);
federated runs average over the attacked clients. Higher MSE and lower PSNR/SSIM mean more privacy.
"best of n": the attack ran n repeats (attack.seed) on the same targets; shown is the repeat with the
lowest MSE on the attacker's own validation images, as an attacker restarting its training would keep.
H(x|z) rel.: -L_C of the last epoch's mixture (Eq. 3 with H(x) := 0, nats; federated: mean over
clients, "global" for the server's merged mixture). MSE bound est.: Theorem 1 with H(x) replaced by the
entropy of a Gaussian of the data's mean pixel variance (or, "full cov.", of its full pixel covariance),
an estimate rather than a certificate (docs/CEM.md). MSE/bound: measured MSE over that estimate;
"below bound est." marks an attack that beat it: the H(x) estimate is too high, the bound no guarantee.
Averages follow the paper's last two rows: over the methods that have both a row without and with
CEM. Gain: relative change for MSE, PSNR, SSIM, bound and time; difference for accuracy (points) and H(x|z).
"""


def write_report(folder: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Read the sweep folder, build the table, write every report file; returns report.json's content.

    Parameters
    ----------
    folder
        A sweep folder (with ``sweep.json``) or any folder whose sub-folders are runs.
    out
        Where to write (default ``<folder>/report``).
    """
    folder = Path(folder)
    out = Path(out) if out is not None else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    records, manifest = load_records(folder)
    table = build_table(records)
    column = mse_column(table.columns)
    figures: list[Path] = []
    fits: dict[str, EntropyFit] = {}
    if column is not None and table.rows:
        fits = plot_mse_vs_entropy(records, column, out / "fig3_mse_vs_entropy.png")
        figures.append(out / "fig3_mse_vs_entropy.png")
        figures += plot_accuracy_vs_mse(table, column, out)
        figures += plot_reconstructions(table, records, out)
    write_hparams(records, table, out / "tb_hparams")
    name = manifest.get("name", folder.name)
    report = {
        "sweep": name,
        "folder": str(folder),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "provenance": provenance(records),
        "columns": table.columns,
        "roles": {"method": table.roles.method, "cem": table.roles.cem, "other": table.roles.other},
        "rows": [_row_json(row) for row in table.rows],
        "averages": [_average_json(avg) for avg in table.averages],
        "cells": [_cell_json(record) for record in records],
        "fig3_column": column,
        "fig3_fits": figure_summary(fits),
        "figures": [p.name for p in figures],
    }
    (out / "report.json").write_text(json.dumps(_finite(report), indent=2, allow_nan=False))
    write_csvs(table, records, out)
    (out / "report.md").write_text(markdown(name, table, records, fits, column, figures))
    return report


def provenance(records: Sequence[RunRecord]) -> dict[str, list[str]]:
    """Where and when the cells ran: distinct machines (with versions), first and last start, commits."""
    machines = {
        f"{env.get('machine', '?')}, {env.get('cpus', '?')} CPUs, CUDA {env.get('cuda', '?')}, "
        f"Python {env.get('python', '?')}, torch {env.get('torch', '?')}"
        for env in (r.environment for r in records)
        if env
    }
    dates = sorted(r.environment["date"] for r in records if "date" in r.environment)
    # the sweep's wall time in all, the figure a compute budget is held against
    compute = {part: sum(r.values.get(f"{part}_s", 0.0) for r in records) for part in ("train", "attack")}
    return {
        "machines": sorted(machines),
        "started": [dates[0], dates[-1]] if dates else [],
        "commits": sorted({r.commit for r in records if r.commit}),
        "compute_s": compute,
    }


# ----------------------------------------------------------------------------- markdown
def markdown(name: str, table: Table, records: Sequence[RunRecord], fits: dict[str, EntropyFit], column: str | None, figures: Sequence[Path]) -> str:
    """The whole report.md."""
    counts = {status: sum(r.status == status for r in records) for status in ("done", "failed", "running", "pending")}
    lines = [f"# Sweep report: {name}", "", f"{len(records)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ".", ""]
    origin = provenance(records)
    if origin["machines"]:
        started = " to ".join(dict.fromkeys(origin["started"]))
        hours = {part: seconds / 3600 for part, seconds in origin["compute_s"].items()}
        lines += [
            f"Ran on {'; '.join(origin['machines'])}; cells started {started}; commit {', '.join(origin['commits']) or 'unknown'}; "
            f"{hours['train'] + hours['attack']:.2f} h of training and attacks in all ({hours['train']:.2f} h training, {hours['attack']:.2f} h attacks).",
            "",
        ]
    lines.append(NOTES)
    quality = [c for c in table.columns if c.endswith(("_psnr", "_ssim")) or ratio_pair(c)]
    main = [c for c in table.columns if c not in quality]
    for execution in table.executions:
        rows = [row for row in table.rows if row.execution == execution]
        if not rows:
            continue
        lines += [f"## {execution}", "", *_table(table, rows, main, with_averages=True), ""]
        if quality:
            lines += [f"### {execution}: PSNR and SSIM (supplement S.4), MSE / bound estimate", "", *_table(table, rows, quality, with_averages=False), ""]
    if len(table.executions) > 1:
        lines += ["## Centralized and federated side by side", "", *_comparison(table), ""]
    gains = [_gain_line(avg) for avg in table.averages]
    if gains:
        lines += ["## CEM gain", "", *gains, ""]
    if fits:
        lines += [f"## MSE vs H(x|z) (Fig. 3, {column})", ""]
        lines += [_fit_line(name, fit) for name, fit in fits.items()]
        lines.append("")
    violations = _violation_lines(records)
    if violations:
        lines += ["## Below the Theorem-1 bound estimate", "", *violations, ""]
    bad = [r for r in records if r.status != "done"]
    if bad:
        lines += ["## Cells not finished", "", "| Cell | Status | Error |", "| --- | --- | --- |"]
        lines += [f"| {r.name} | {r.status} | {r.error.replace('|', '/') or '—'} |" for r in bad]
        lines.append("")
    if figures:
        lines += ["## Figures", "", *(f"![{p.stem}]({p.name})" for p in figures), ""]
    return "\n".join(lines)


def _table(table: Table, rows: list[Row], columns: list[str], with_averages: bool) -> list[str]:
    other = list(table.roles.other)
    head = ["Method", "CEM", *other, "n", *(_header(c) for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    averages = [a for a in table.averages if a.execution == rows[0].execution] if with_averages else []
    for i, row in enumerate(rows):
        cells = [row.label, row.cem or "—", *(str(row.other[k]) for k in other), str(row.n)]
        cells += [_failed_or(c, row) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
        last_of_block = i + 1 == len(rows) or rows[i + 1].other != row.other
        if last_of_block:
            shown: tuple[list[str], dict[str, float]] | None = None
            for avg in (a for a in averages if a.other == row.other):
                lines += _average_lines(avg, other, columns, with_baseline=shown != (avg.methods, avg.without))
                shown = (avg.methods, avg.without)
    return lines


def _average_lines(avg: Average, other: list[str], columns: list[str], with_baseline: bool) -> list[str]:
    """The w/o, w/ and gain lines; the w/o line only when it differs from the one just above (several lambdas)."""
    n = f"{len(avg.methods)} method" + ("s" if len(avg.methods) != 1 else "")
    fixed = [*(str(avg.other[k]) for k in other), n]
    lines = [("**Average w/ CEM**", avg.cem, avg.with_cem)]
    if with_baseline:
        lines.insert(0, ("**Average w/o CEM**", "—", avg.without))
    out = ["| " + " | ".join([label, cem, *fixed, *(_number(c, values.get(c)) for c in columns)]) + " |" for label, cem, values in lines]
    out.append("| " + " | ".join(["**Gain**", avg.cem, *fixed, *(_gain(c, avg.gain.get(c)) for c in columns)]) + " |")
    return out


def _comparison(table: Table) -> list[str]:
    """Rows of the same setting in every execution next to each other: accuracy and MSEs."""
    mses = [c for c in table.columns if c.endswith("_mse") and c not in ("mse_lower_bound", "global_mse_lower_bound")]
    columns = ["accuracy", *mses]
    head = ["Method", "CEM", *table.roles.other]
    head += [f"{e}: {_header(c)}" for e in table.executions for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    keys = list(dict.fromkeys((row.label, row.cem, tuple(row.other.items())) for row in table.rows))
    index = {(row.execution, row.label, row.cem, tuple(row.other.items())): row for row in table.rows}
    for label, cem, other in keys:
        cells = [label, cem or "—", *(str(v) for _, v in other)]
        for execution in table.executions:
            row = index.get((execution, label, cem, other))
            cells += [_mean_std(c, row.mean.get(c), row.std.get(c)) if row else "—" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fit_line(name: str, fit: EntropyFit) -> str:
    """The measured exponential beside the rate Theorem 1 gives it (``2 / d_x``)."""
    m = fit.measured
    theorem = f"; Theorem 1's rate 2/d_x = {fit.theorem_rate:.3g}, measured/theorem {m.rate / fit.theorem_rate:.2f}" if fit.theorem_rate else ""
    return f"- {name}: MSE ≈ exp({m.log_scale:.3g} + {m.rate:.3g} H), r(H, log MSE) = {m.r_log:.3f}, r(H, MSE) = {m.r_linear:.3f}, n = {m.n}{theorem}"


def _gain_line(avg: Average) -> str:
    where = ", ".join([avg.execution, *(f"{k}={v}" for k, v in avg.other.items()), avg.cem])
    accuracy = avg.gain.get("accuracy", math.nan)
    # a mode no attack ran in (or whose attacks all failed) has no gain: say nothing rather than "nan"
    modes = [f"{gain:+.1%} on {data} data" for gain, data in ((avg.gain_train_mse, "training"), (avg.gain_infer_mse, "inference")) if not math.isnan(gain)]
    mse = f"reconstruction MSE {', '.join(modes)} (mean over attacks of the relative gain of the averages)" if modes else "no attack succeeded on both rows"
    methods = f"{len(avg.methods)} method{'s' if len(avg.methods) != 1 else ''}"
    return f"- {where}: {mse}, accuracy {100 * accuracy:+.2f} points, over {methods} ({', '.join(avg.methods)})"


def _violation_lines(records: Sequence[RunRecord]) -> list[str]:
    """One line per cell and attack whose MSE fell below a Theorem 1 estimate."""
    lines = []
    for record in records:
        for key in sorted(k for k in record.values if k.endswith(("_violated", "_violated_full"))):
            pair, _, full = key.partition("_violated")
            mse, ratio = record.values.get(f"{pair}_mse"), record.values.get(f"{pair}_ratio{full}")
            lines.append(
                f"- {record.name}: {pair.replace('_', ' ')} MSE {_number('_mse', mse)} is below the {'full-covariance' if full else 'isotropic'} "
                f"estimate (MSE/bound {_number(f'{pair}_ratio', ratio)}): the H(x) estimate is too high, so the bound is no guarantee here"
            )
    return lines


def _header(column: str) -> str:
    if column in HEADERS:
        return HEADERS[column]
    if ratio_pair(column):
        attack, mode = ratio_pair(column).rsplit("_", 1)
        return f"{ATTACK_NAMES.get(attack, attack)} MSE/bound{' (full cov.)' if column.endswith('_full') else ''} {mode}"
    attack, mode, quality = column.rsplit("_", 2)
    return f"{ATTACK_NAMES.get(attack, attack)} {quality.upper()} {mode}"


def _number(column: str, value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    if column == "accuracy":
        return f"{100 * value:.2f}"
    if column.endswith("_mse"):
        return f"{value:.4f}"
    if column.endswith(("mse_lower_bound", "mse_lower_bound_full")) or ratio_pair(column):
        return f"{value:.3g}"
    if column.endswith("_psnr"):
        return f"{value:.2f}"
    if column.endswith("_ssim"):
        return f"{value:.3f}"
    if column.endswith("hxz_relative"):
        return f"{value:.1f}"
    return f"{value:.1f}"


def _failed_or(column: str, row: Row) -> str:
    """A cell of a row: ``failed`` where the attack did not beat the mean image, else mean ± std,
    with the repeats an MSE was chosen from, marked where a seed's MSE fell below the Theorem 1
    estimate (the isotropic one for MSEs)."""
    pair = ratio_pair(column) or column.rsplit("_", 1)[0]
    if column not in row.mean and f"{pair}_failed" in row.mean:
        return f"failed (mean image {_number(column, row.mean.get(f'{pair}_mean_image'))})" if column.endswith("_mse") else "failed"
    text = _mean_std(column, row.mean.get(column), row.std.get(column))
    repeats = row.mean.get(f"{pair}_repeats", 1.0)
    if column.endswith("_mse") and repeats > 1:
        text = f"{text} (best of {repeats:g})"
    flag = f"{pair}_violated{'_full' if column.endswith('_ratio_full') else ''}"
    return f"{text} **below bound est.**" if column.endswith(("_mse", "_ratio", "_ratio_full")) and flag in row.mean else text


def _mean_std(column: str, mean: float | None, std: float | None) -> str:
    text = _number(column, mean)
    if std is None or math.isnan(std) or text == "—":
        return text
    return f"{text} ± {_number(column, std)}"


def _gain(column: str, value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    if column == "accuracy":
        return f"{100 * value:+.2f} pts"
    if column.endswith("hxz_relative"):
        return f"{value:+.1f}"
    return f"{value:+.1%}"


# ----------------------------------------------------------------------------- CSV and JSON
def write_csvs(table: Table, records: Sequence[RunRecord], out: Path) -> None:
    """rows.csv, averages.csv and cells.csv (numbers unformatted, empty when absent)."""
    other = list(table.roles.other)
    with (out / "rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["execution", "method", "cem", "lambda", *other, "n", "seeds", "cells", *(f"{c}_{s}" for c in table.columns for s in ("mean", "std"))])
        for row in table.rows:
            stats = [_csv(d.get(c)) for c in table.columns for d in (row.mean, row.std)]
            seeds = " ".join(str(s) for s in row.seeds)
            writer.writerow([row.execution, row.label, row.cem, row.lam, *(row.other[k] for k in other), row.n, seeds, " ".join(row.cells), *stats])
    with (out / "averages.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["execution", *other, "cem", "lambda", "statistic", "methods", *table.columns, "gain_train_mse", "gain_infer_mse"])
        for avg in table.averages:
            fixed = [avg.execution, *(avg.other[k] for k in other), avg.cem, avg.lam]
            methods = " ".join(avg.methods)
            writer.writerow([*fixed, "without_cem", methods, *(_csv(avg.without.get(c)) for c in table.columns), "", ""])
            writer.writerow([*fixed, "with_cem", methods, *(_csv(avg.with_cem.get(c)) for c in table.columns), "", ""])
            writer.writerow([*fixed, "gain", methods, *(_csv(avg.gain.get(c)) for c in table.columns), _csv(avg.gain_train_mse), _csv(avg.gain_infer_mse)])
    keys = [*table.roles.method, *table.roles.cem, *other]
    with (out / "cells.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "execution", "status", "seed", *keys, *table.columns, "error"])
        for record in records:
            values = [_csv(record.values.get(c)) for c in table.columns]
            writer.writerow([record.name, record.execution, record.status, record.seed, *(record.config.get(k, "") for k in keys), *values, record.error])


def _csv(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def _row_json(row: Row) -> dict[str, Any]:
    return {
        "execution": row.execution,
        "method": row.method,
        "label": row.label,
        "lambda": row.lam,
        "cem": row.cem,
        "other": row.other,
        "n": row.n,
        "seeds": row.seeds,
        "cells": row.cells,
        "mean": row.mean,
        "std": row.std,
        "count": row.count,
    }


def _average_json(avg: Average) -> dict[str, Any]:
    return {
        "execution": avg.execution,
        "other": avg.other,
        "lambda": avg.lam,
        "cem": avg.cem,
        "methods": avg.methods,
        "without_cem": avg.without,
        "with_cem": avg.with_cem,
        "gain": avg.gain,
        "gain_train_mse": avg.gain_train_mse,
        "gain_infer_mse": avg.gain_infer_mse,
    }


def _cell_json(record: RunRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "execution": record.execution,
        "status": record.status,
        "seed": record.seed,
        "values": record.values,
        "grids": {k: str(v) for k, v in record.grids.items()},
        "error": record.error,
    }


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
