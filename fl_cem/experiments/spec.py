"""Sweep descriptions: one TOML file that expands into named cells, one training run each.

A sweep is the grid behind a results table: defenses with and without CEM, lambda, sigma,
seeds, run centrally and federated (paper Table 1, Fig. 3, Fig. 4). Layout::

    execution = ["centralized", { kind = "federated", clients = 4, "cem.federation" = ["local", "global"] }]
    attacks = [{ attack = "decoder", "attack.epochs" = 2 }, { attack = "gan", mode = "train" }]
    exclude = [{ defense = "none", "cem.lambda" = 16.0 }]

    [sweep]                      # optional
    name = "cpu_smoke"           # default: the file's stem; cells run in <output-dir>/<name>/<cell>/
    output-dir = "runs"
    archive = "benchmarks/results/cpu_smoke/cells"   # optional: finished cells kept there

    [base]                       # config keys of every cell: dotted keys or nested tables
    "data.source" = "digits"

    [grid]                       # the Cartesian product of these axes, in this order
    "cem.lambda" = [0.0, 16.0]   # a config key with its values
    defense = [                  # or a named axis of labelled bundles of keys set together
      { label = "bottleneck", "defense.name" = "bottleneck" },
      { label = "none", "defense.name" = "none", "model.bottleneck" = 0, "noise.sigma" = 0.0 },
    ]
    "run.seed" = [0, 1]

``archive`` (relative to the working directory, as ``output-dir``) is where a sweep that spans
sessions keeps its evidence: each finished cell's ``results.json``, ``config.toml`` and attack
grids are copied there, and a cell whose run folder is missing but whose archived copy is
finished with the same config is restored from it instead of trained again. Run folders
(checkpoints, TensorBoard logs) are large and local; the archive is small enough to commit.

Top-level arrays must come before the first ``[table]`` (TOML puts later keys inside that
table); ``[[execution]]``, ``[[attacks]]`` and ``[[exclude]]`` tables work anywhere.

- ``execution``: ``"centralized"``, ``"federated"``, or tables with ``kind``, optional ``label``,
  ``clients`` (default ``partition.num-partitions``), ``client-cpus`` (Ray CPUs per simulated
  client, default 1) and config keys; a list value there expands the entry (one execution per
  value, e.g. federated ``local`` against ``global`` CEM statistics). Its keys win over
  ``[base]`` and the grid (a federated client takes fewer steps per epoch, so step counts such
  as ``defense.prune-step`` may need its own value). Default: centralized.
- ``attacks``: tables with ``attack``, optional ``mode`` (a string or a list; default both
  ``train`` and ``infer``, Sec. 5.1 "Threat model"), optional ``victims`` (the partition ids of a
  federated cell's clients to attack; default every client: each costs a whole attack), optional
  ``cells`` (fnmatch patterns on cell names: the attack runs only on those, default every cell)
  and ``attack.*`` overrides; ``"attack.seed" = [0, 1, 2]`` runs repeats of the attack, of which
  the report keeps the one the attacker's own validation favours. Default: decoder and GAN, train
  and infer (the four MSE columns of Table 1).
- ``exclude``: tables of ``key = value`` (config keys, or axis names matched on labels); a cell
  matching every entry of one table is left out.

Values are only validated when a cell builds its config, so one bad value fails that cell,
not the sweep; unknown keys fail at load.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fl_cem.config import ATTACK_MODES, Config, Scalar, flatten

EXECUTION_KINDS = ("centralized", "federated")
DEFAULT_ATTACKS = ("decoder", "gan")
# Keys the runner sets per cell; a sweep may not set them.
RESERVED_KEYS = ("run.name", "run.output-dir")


@dataclass(frozen=True)
class Execution:
    """Where a cell trains: centrally, or as a Flower simulation with ``clients`` supernodes."""

    kind: str
    label: str
    client_cpus: float = 1.0
    overrides: dict[str, Scalar] = field(default_factory=dict)
    """Config keys of this execution; ``clients`` is stored as ``partition.num-partitions``."""


@dataclass(frozen=True)
class AttackSpec:
    """One inversion attack to run on the cells: attack name, attacker's data, config overrides,
    which clients of a federated cell it attacks (``()``: every one), and which cells, as
    fnmatch patterns on their names (``()``: every cell; a costly attack on a few rows)."""

    attack: str
    mode: str
    overrides: dict[str, Scalar] = field(default_factory=dict)
    victims: tuple[int, ...] = ()
    cells: tuple[str, ...] = ()

    @property
    def repeat(self) -> int:
        """The attack's ``attack.seed``: each repeat is recorded, and resumed, on its own."""
        return int(self.overrides.get("attack.seed", 0))

    def applies_to(self, cell: str) -> bool:
        return not self.cells or any(fnmatch.fnmatchcase(cell, pattern) for pattern in self.cells)


@dataclass(frozen=True)
class Axis:
    """One grid axis: a name and its values, each a label (for cell names) and the keys it sets."""

    name: str
    values: tuple[tuple[str, dict[str, Scalar]], ...]


@dataclass(frozen=True)
class Cell:
    """One training run of the sweep, with a name that is stable across re-runs."""

    name: str
    execution: Execution
    labels: dict[str, str]
    overrides: dict[str, Scalar]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "execution": self.execution.label,
            "kind": self.execution.kind,
            "client_cpus": self.execution.client_cpus,
            "labels": self.labels,
            "overrides": self.overrides,
        }


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file; :meth:`cells` expands it."""

    name: str
    output_dir: Path
    base: dict[str, Scalar]
    axes: tuple[Axis, ...]
    executions: tuple[Execution, ...]
    attacks: tuple[AttackSpec, ...]
    exclude: tuple[dict[str, Scalar], ...] = ()
    source: str = ""
    archive: Path | None = None

    @property
    def root(self) -> Path:
        """The sweep's folder: one sub-folder per cell, the manifest and the report."""
        return self.output_dir / self.name

    def cells(self) -> list[Cell]:
        """Every (execution, grid point) that no ``exclude`` entry removes, in file order."""
        cells = []
        defaults = Config.defaults_flat()
        for execution in self.executions:
            for point in itertools.product(*(axis.values for axis in self.axes)):
                labels = {axis.name: label for axis, (label, _) in zip(self.axes, point)}
                overrides = dict(self.base)
                for _, keys in point:
                    overrides.update(keys)
                overrides.update(execution.overrides)
                if any(_matches(rule, labels, overrides, defaults) for rule in self.exclude):
                    continue
                name = f"{execution.label}__{'_'.join(labels.values())}" if labels else execution.label
                cells.append(Cell(_safe(name), execution, labels, overrides))
        names = [cell.name for cell in cells]
        clashes = sorted({name for name in names if names.count(name) > 1})
        if clashes:
            raise ValueError(f"sweep {self.name}: cells share the names {clashes}; give the axes or executions distinct labels")
        return cells

    def attacks_for(self, cell: Cell) -> tuple[AttackSpec, ...]:
        """The attacks that run on ``cell`` (those whose ``cells`` patterns match its name)."""
        return tuple(attack for attack in self.attacks if attack.applies_to(cell.name))

    def manifest(self) -> dict[str, Any]:
        """What ``fl-cem report`` reads: executions, attacks and every cell with its labels and keys."""
        return {
            "name": self.name,
            "source": self.source,
            "axes": [axis.name for axis in self.axes],
            "executions": [execution.label for execution in self.executions],
            "attacks": [{"attack": a.attack, "mode": a.mode, "overrides": a.overrides, "victims": list(a.victims), "cells": list(a.cells)} for a in self.attacks],
            "cells": [cell.to_json() for cell in self.cells()],
        }


def load_sweep(path: str | Path, output_dir: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read a sweep TOML (layout in the module docstring).

    Parameters
    ----------
    path
        The sweep file.
    output_dir
        Root of the sweep folder, replacing ``[sweep] output-dir`` (default ``runs``).
    overrides
        Flat config keys put on top of ``[base]`` (``fl-cem sweep --set``).

    Raises
    ------
    ValueError
        Unknown config keys, malformed tables, or cells with clashing names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    try:
        tree = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"sweep file {path} is not valid TOML: {err}") from err
    known = set(Config.defaults_flat())
    unknown = sorted(set(tree) - {"sweep", "base", "grid", "execution", "attacks", "exclude"})
    if unknown:
        raise ValueError(f"sweep file {path}: unknown top-level entries {unknown}")
    settings = tree.get("sweep", {})
    unknown_settings = sorted(set(settings) - {"name", "output-dir", "archive"})
    if unknown_settings:
        raise ValueError(f"sweep file {path}: unknown [sweep] keys {unknown_settings} (known: name, output-dir, archive)")
    base = {**flatten(tree.get("base", {})), **(overrides or {})}
    _check_keys(base, known, "[base]")
    axes = tuple(_axis(name, values, known) for name, values in _grid_items(tree.get("grid", {})))
    _check_short_labels(axes)
    executions = tuple(itertools.chain.from_iterable(_executions(entry, known) for entry in tree.get("execution", ["centralized"])))
    labels = [execution.label for execution in executions]
    if len(set(labels)) != len(labels):
        raise ValueError(f"sweep file {path}: executions share labels {labels}; give each a distinct 'label'")
    attack_entries = tree.get("attacks", [{"attack": name} for name in DEFAULT_ATTACKS])
    attacks = tuple(itertools.chain.from_iterable(_attacks(entry, known) for entry in attack_entries))
    exclude = tuple(flatten(rule) for rule in tree.get("exclude", []))
    axis_names = {axis.name for axis in axes}
    for rule in exclude:
        _check_keys({k: v for k, v in rule.items() if k not in axis_names}, known, "exclude")
    return SweepSpec(
        name=str(settings.get("name", path.stem)),
        output_dir=Path(output_dir if output_dir is not None else settings.get("output-dir", "runs")),
        base=base,
        axes=axes,
        executions=executions,
        attacks=attacks,
        exclude=exclude,
        source=str(path),
        archive=Path(settings["archive"]) if settings.get("archive") else None,
    )


def _grid_items(grid: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Grid axes in file order; nested tables (``[grid.cem] lambda = [...]``) become dotted keys."""
    items: list[tuple[str, Any]] = []
    for key, value in grid.items():
        if isinstance(value, Mapping):
            items.extend((f"{key}.{sub}", v) for sub, v in flatten(value).items())
        else:
            items.append((key, value))
    return items


def _axis(name: str, values: Any, known: set[str]) -> Axis:
    if not isinstance(values, list) or not values:
        raise ValueError(f"grid axis {name!r} must be a non-empty list; got {values!r}")
    if all(isinstance(v, Mapping) for v in values):
        bundles = []
        for value in values:
            keys = flatten({k: v for k, v in value.items() if k != "label"})
            if "label" not in value:
                raise ValueError(f"grid axis {name!r}: every table needs a 'label' (used in cell names); got {dict(value)}")
            _check_keys(keys, known, f"grid axis {name!r}")
            bundles.append((str(value["label"]), keys))
        return Axis(name, tuple(bundles))
    if name not in known:
        raise ValueError(
            f"grid axis {name!r} is neither a config key nor a list of labelled tables "
            "(top-level arrays such as execution or attacks must come before the first [table])"
        )
    _check_keys({name: values[0]}, known, "[grid]")
    return Axis(name, tuple((_value_label(name, v), {name: v}) for v in values))


def _check_short_labels(axes: tuple[Axis, ...]) -> None:
    """Two numeric axes whose keys end alike (``train.epochs``, ``attack.epochs``) get full keys in labels."""
    numeric = [axis for axis in axes if all(set(keys) == {axis.name} and not isinstance(keys[axis.name], str) for _, keys in axis.values)]
    shorts = [_short(axis.name) for axis in numeric]
    if len(set(shorts)) != len(shorts):
        clashing = sorted({s for s in shorts if shorts.count(s) > 1})
        raise ValueError(f"grid axes share the short name(s) {clashing} used in cell names; use a labelled table axis for one of them")


def _value_label(key: str, value: Scalar) -> str:
    """``lambda16``, ``sigma0.025``, ``seed1``; strings stand for themselves (``bottleneck``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return f"{_short(key)}{'on' if value else 'off'}"
    if isinstance(value, float):
        return f"{_short(key)}{value:g}"
    return f"{_short(key)}{value}"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _executions(entry: Any, known: set[str]) -> list[Execution]:
    if isinstance(entry, str):
        entry = {"kind": entry}
    if not isinstance(entry, Mapping) or entry.get("kind") not in EXECUTION_KINDS:
        raise ValueError(f"execution entries are 'centralized', 'federated' or tables with kind = one of those; got {entry!r}")
    kind = str(entry["kind"])
    clients = entry.get("clients")
    if clients is not None and (not isinstance(clients, int) or clients < 1 or kind != "federated"):
        raise ValueError(f"execution 'clients' must be a positive integer of a federated entry; got {clients!r} ({kind})")
    keys = flatten({k: v for k, v in entry.items() if k not in ("kind", "label", "clients", "client-cpus")})
    _check_keys(keys, known, f"execution {kind}")
    listed = {k: v for k, v in keys.items() if isinstance(v, list)}
    fixed = {k: v for k, v in keys.items() if not isinstance(v, list)}
    if clients is not None:
        # the server records the partition count it ran with; the cell's config must say the same
        fixed["partition.num-partitions"] = clients
    out = []
    for combo in itertools.product(*listed.values()):
        chosen = dict(zip(listed, combo))
        label = str(entry.get("label", kind))
        if chosen:
            label = "-".join([label, *(_value_label(k, v) for k, v in chosen.items())])
        out.append(Execution(kind, _safe(label), float(entry.get("client-cpus", 1.0)), {**fixed, **chosen}))
    return out


def _attacks(entry: Any, known: set[str]) -> list[AttackSpec]:
    if isinstance(entry, str):
        entry = {"attack": entry}
    if not isinstance(entry, Mapping) or "attack" not in entry:
        raise ValueError(f"attacks entries are attack names or tables with 'attack'; got {entry!r}")
    modes = entry.get("mode", list(ATTACK_MODES))
    modes = [modes] if isinstance(modes, str) else list(modes)
    for mode in modes:
        if mode not in ATTACK_MODES:
            raise ValueError(f"attack mode must be one of {', '.join(ATTACK_MODES)}; got {mode!r}")
    victims = entry.get("victims", [])
    if not isinstance(victims, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in victims):
        raise ValueError(f"attack {entry['attack']}: victims must be a list of client partition ids (integers >= 0); got {victims!r}")
    cells = entry.get("cells", [])
    cells = [cells] if isinstance(cells, str) else cells
    if not isinstance(cells, list) or not all(isinstance(c, str) and c for c in cells):
        raise ValueError(f"attack {entry['attack']}: cells must be a list of cell-name patterns (fnmatch, e.g. 'centralized__bottleneck_*'); got {cells!r}")
    keys = flatten({k: v for k, v in entry.items() if k not in ("attack", "mode", "victims", "cells")})
    _check_keys(keys, known, f"attack {entry['attack']}")
    repeats = keys.pop("attack.seed", 0)
    repeats = list(repeats) if isinstance(repeats, list) else [repeats]
    if not repeats or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in repeats) or len(set(repeats)) < len(repeats):
        raise ValueError(f"attack {entry['attack']}: attack.seed must be an integer >= 0 or a list of distinct ones (repeats); got {repeats!r}")
    return [
        AttackSpec(str(entry["attack"]), mode, {**keys, "attack.seed": repeat} if repeat else keys, tuple(victims), tuple(cells))
        for mode in modes
        for repeat in repeats
    ]


def _check_keys(keys: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in keys:
        if key in RESERVED_KEYS:
            raise ValueError(f"{where}: {key} is set per cell by the sweep and cannot be given")
        if key not in known:
            raise ValueError(f"{where}: unknown config key {key!r}")


def _matches(rule: Mapping[str, Scalar], labels: Mapping[str, str], overrides: Mapping[str, Scalar], defaults: Mapping[str, Scalar]) -> bool:
    for key, wanted in rule.items():
        actual = labels[key] if key in labels and key not in defaults else overrides.get(key, defaults.get(key))
        if actual != wanted:
            return False
    return True


def _safe(name: str) -> str:
    """A folder name: anything but letters, digits, ``.``, ``_``, ``=``, ``-`` becomes ``-``."""
    return re.sub(r"[^A-Za-z0-9._=-]", "-", name)


__all__ = ["AttackSpec", "Axis", "Cell", "Execution", "SweepSpec", "load_sweep"]
