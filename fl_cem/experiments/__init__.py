"""Experiments: sweep descriptions that expand into cells, and the runner that trains and attacks them.

``spec`` reads a sweep TOML into named cells, ``sweep`` runs them (resumable, failures recorded),
``cli`` adds ``fl-cem sweep`` and ``fl-cem report``. Reports and figures live in
:mod:`fl_cem.reporting`.
"""

from fl_cem.experiments.spec import AttackSpec, Cell, Execution, SweepSpec, load_sweep

__all__ = ["AttackSpec", "Cell", "Execution", "SweepSpec", "load_sweep"]
