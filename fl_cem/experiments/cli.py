"""``fl-cem sweep`` and ``fl-cem report``: the subcommands, added to the main parser by ``add_subcommands``."""

from __future__ import annotations

import argparse

from fl_cem.config import parse_override


def cmd_sweep(args: argparse.Namespace) -> int:
    from fl_cem.experiments.spec import load_sweep

    spec = load_sweep(args.sweep, args.output_dir, dict(parse_override(item) for item in args.set))
    from fl_cem.experiments.sweep import run_sweep, select_cells

    if args.dry_run:
        cells = select_cells(spec.cells(), args.only)
        print(f"sweep {spec.name}: {len(cells)} cells in {spec.root}, attacks {', '.join(f'{a.attack}/{a.mode}' for a in spec.attacks)}")
        for cell in cells:
            only_here = [f"{a.attack}/{a.mode}" for a in spec.attacks_for(cell) if a.cells]
            print(f"  {cell.name}" + (f" (+ {', '.join(only_here)})" if only_here else ""))
        return 0
    summary = run_sweep(spec, only=args.only)
    if not args.no_report:
        _report(str(spec.root))
    return 1 if summary.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    _report(args.folder, args.out)
    return 0


def _report(folder: str, out: str | None = None) -> None:
    from fl_cem.reporting.report import write_report

    report = write_report(folder, out)
    failed = sum(cell["status"] == "failed" for cell in report["cells"])
    where = out or f"{folder}/report"
    print(f"report: {len(report['rows'])} rows, {len(report['cells'])} cells ({failed} failed) -> {where}/report.md")


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``sweep`` and ``report`` to ``fl-cem``'s subparsers (``build_parser`` calls this)."""
    sweep = subparsers.add_parser("sweep", help="run every cell of a sweep TOML (resumable), then write its report")
    sweep.add_argument("sweep", help="sweep file, e.g. sim_configs/sweeps/cpu_smoke.toml")
    sweep.add_argument("--output-dir", help="root of the sweep folder (default: [sweep] output-dir, else runs)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a [base] key, e.g. run.device=cuda")
    sweep.add_argument("--only", action="append", default=[], metavar="PATTERN", help="run only cells whose names match (fnmatch; repeatable)")
    sweep.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    sweep.add_argument("--no-report", action="store_true", help="do not write the report after the sweep")
    sweep.set_defaults(func=cmd_sweep)
    report = subparsers.add_parser("report", help="tables (md, csv, json) and figures of a sweep folder")
    report.add_argument("folder", help="sweep folder, e.g. runs/cpu_smoke")
    report.add_argument("--out", help="output folder (default: <folder>/report)")
    report.set_defaults(func=cmd_report)
