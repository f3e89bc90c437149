"""The whole run config: sections, flat keys, validation across sections, checkpoint comparison."""

from __future__ import annotations

import ast
import difflib
import inspect
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from fl_cem.config.attack import AttackConfig
from fl_cem.config.cem import CEMConfig
from fl_cem.config.checks import Scalar
from fl_cem.config.defense import DefenseConfig
from fl_cem.config.federated import FederatedConfig
from fl_cem.config.flat import flatten
from fl_cem.config.malicious import MaliciousConfig
from fl_cem.config.sections import (
    DataConfig,
    ModelConfig,
    NoiseConfig,
    PartitionConfig,
    RunConfig,
    TrainConfig,
)
from fl_cem.registry import list_attacks, list_defenses

EXECUTION_KEYS = ("run.resume", "run.device", "run.output-dir")
VERDICT_KEYS = ("malicious.alarm",)
"""Thresholds that only turn a recorded statistic into a verdict (each client's gradient-norm CV,
recorded per round, into ``hijack_alarm``): a checkpoint or archived sweep cell made under another
value stays valid (its earlier rounds keep the verdicts of their time), and reports do not split
rows by them."""
PATH_KEYS = ("data.root",)
"""Compared as the files they name: a federated launch records them absolute (Ray's workers
need not share the working directory), a sweep cell as the sweep file wrote them."""


@dataclass(frozen=True)
class Config:
    """The whole run configuration; build it with :meth:`from_flat` or :meth:`load`."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    cem: CEMConfig = field(default_factory=CEMConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    malicious: MaliciousConfig = field(default_factory=MaliciousConfig)

    def __post_init__(self) -> None:
        if self.cem.enabled and self.cem.variant == "paper" and self.noise.sigma == 0:
            raise ValueError(
                "cem.lambda > 0 with cem.variant = 'paper' needs noise.sigma > 0: "
                "the bound's log-determinant ratio log|S+Sp|/|Sp| is infinite for Sp = 0"
            )
        if self.federated.pools and self.malicious.attack != "none":
            raise ValueError(f"{self.federated.pooling_key} with malicious.attack: the hijacking server answers each client's batch on its own; use one or the other")
        if self.defense.name not in list_defenses():
            raise ValueError(
                f"defense.name {self.defense.name!r} is not a registered defense; "
                f"choose one of {', '.join(list_defenses())}"
            )
        if self.attack.name not in list_attacks():
            raise ValueError(
                f"attack.name {self.attack.name!r} is not a registered attack; "
                f"choose one of {', '.join(list_attacks())}"
            )

    # ------------------------------------------------------------------ flat keys
    @classmethod
    def defaults_flat(cls) -> dict[str, Scalar]:
        """Every key with its default, as ``pyproject.toml`` must declare them."""
        return cls.to_flat(cls())

    def to_flat(self) -> dict[str, Scalar]:
        """Flattened ``{"section.key": value}`` view, for results files and Flower."""
        flat: dict[str, Scalar] = {}
        for section in fields(self):
            sub = getattr(self, section.name)
            for f in fields(sub):
                flat[f"{section.name}.{f.metadata.get('key', f.name.replace('_', '-'))}"] = getattr(sub, f.name)
        return flat

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> Config:
        """Build a validated config from flattened keys; unknown keys and wrong types raise."""
        known = cls.defaults_flat()
        by_section: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown config key {key!r}{hint}")
            value = _coerce(key, value, known[key])
            section, name = key.split(".", 1)
            by_section.setdefault(section, {})[_field_name(cls, section, name)] = value
        sections = {}
        for section in fields(cls):
            sub_cls = section.default_factory  # type: ignore[misc]
            sections[section.name] = sub_cls(**by_section.get(section.name, {}))  # type: ignore[operator]
        return cls(**sections)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
        """Read a run-config TOML (nested tables or dotted keys) and apply ``overrides`` on top."""
        flat: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            try:
                flat.update(flatten(tomllib.loads(path.read_text())))
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"config file {path} is not valid TOML: {err}") from err
        flat.update(overrides or {})
        return cls.from_flat(flat)

    def differences(self, other: Mapping[str, Any]) -> list[str]:
        """Keys whose values differ from a flat config, ignoring where and how a run executes.

        ``run.resume``, ``run.device`` and ``run.output-dir`` do not change what a run computes,
        so a checkpoint stays valid across them (a sweep moved to a GPU, an absolute path).
        ``data.root`` matches when both name the same file from here (``PATH_KEYS``).
        The attacker's settings (``attack.*`` but the curious server's interception during
        training) only act after training, ``VERDICT_KEYS`` only threshold what is recorded, and a key the checkpoint predates counts as its
        default, which keeps what the older code computed: a run trained before an upgrade
        resumes after it.
        """
        defaults = Config.defaults_flat()
        mine = {k: v for k, v in self.to_flat().items() if k not in EXECUTION_KEYS + VERDICT_KEYS and not _attack_only(k)}
        return sorted(k for k in mine if not _same(k, mine[k], other.get(k, defaults[k])))

    def cem_idle_reason(self, kind: str) -> str | None:
        """Why ``cem.lambda > 0`` would change nothing in a ``kind`` run, or ``None`` when L_C acts.

        The mixture L_C needs exists only after the first refit (:meth:`CEMConfig.refits_at`):
        the official variant fits it after epoch 1, so a one-epoch run trains without CEM and
        its "CEM" row equals the row without it to every digit.
        """
        cem = self.cem
        epochs = self.total_epochs(kind)
        if not cem.enabled or any(cem.refits_at(epoch) for epoch in range(epochs)):
            return None
        return (
            f"cem.lambda = {cem.lam:g} never acts: the {cem.variant} variant fits its first mixture "
            f"{'before epoch 1' if cem.fits_before_training else 'after epoch 1'} (cem.refit-every = {cem.refit_every}) "
            f"and the run trains {epochs} epoch(s)"
        )

    def total_epochs(self, kind: str) -> int:
        """Passes over the data of a ``kind`` run: ``train.epochs``, or rounds x local epochs federated."""
        return self.train.epochs if kind == "centralized" else self.federated.rounds * self.federated.local_epochs

    def for_kind(self, kind: str) -> Config:
        """This config with ``run.name = auto`` resolved to the entry point's folder (``centralized``, ``federated``)."""
        return self if self.run.name != "auto" else self.replace(**{"run.name": kind})

    def replace(self, **flat: Any) -> Config:
        """A copy with some flat keys changed (``cfg.replace(**{"cem.lambda": 16.0})``)."""
        return Config.from_flat({**self.to_flat(), **flat})


TRAINING_ATTACK_KEYS = ("attack.intercept", "attack.intercept-max", "attack.intercept-stats", "attack.intercept-stats-max")
"""The ``attack.*`` keys that act during training: what the curious server records."""


def _same(key: str, mine: Any, theirs: Any) -> bool:
    if key in PATH_KEYS and isinstance(mine, str) and isinstance(theirs, str) and mine and theirs:
        return Path(mine).expanduser().resolve() == Path(theirs).expanduser().resolve()
    return bool(mine == theirs)


def _attack_only(key: str) -> bool:
    return key.startswith("attack.") and key not in TRAINING_ATTACK_KEYS


def field_docs() -> dict[str, str]:
    """Each key's docstring (the string under its field) on one line, by flat key.

    Attribute docstrings are not kept at run time, so they are read from each section's source.
    """
    section_classes = {f.default_factory.__name__: f.default_factory for f in fields(Config)}  # type: ignore[union-attr]
    sections = {f.default_factory.__name__: f.name for f in fields(Config)}  # type: ignore[union-attr]
    modules = {cls.__module__ for cls in section_classes.values()}  # type: ignore[union-attr]
    nodes = [node for module in sorted(modules) for node in ast.parse(inspect.getsource(sys.modules[module])).body]
    docs: dict[str, str] = {}
    for node in nodes:
        if not (isinstance(node, ast.ClassDef) and node.name in sections):
            continue
        sub_cls = section_classes[node.name]
        keys = {f.name: f.metadata.get("key", f.name.replace("_", "-")) for f in fields(sub_cls)}
        for field_node, doc_node in zip(node.body, node.body[1:]):
            if (
                isinstance(field_node, ast.AnnAssign)
                and isinstance(field_node.target, ast.Name)
                and field_node.target.id in keys
                and isinstance(doc_node, ast.Expr)
                and isinstance(doc_node.value, ast.Constant)
                and isinstance(doc_node.value.value, str)
            ):
                docs[f"{sections[node.name]}.{keys[field_node.target.id]}"] = " ".join(doc_node.value.value.split()).replace("``", "")
    return docs


def _field_name(cls: type[Config], section: str, key: str) -> str:
    sub_cls = next(f for f in fields(cls) if f.name == section).default_factory  # type: ignore[misc]
    for f in fields(sub_cls):  # type: ignore[arg-type]
        if f.metadata.get("key", f.name.replace("_", "-")) == key:
            return f.name
    raise KeyError(key)


def _coerce(key: str, value: Any, default: Scalar) -> Scalar:
    expected = type(default)
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # ``sync-every=8`` arrives as a number from ``--run-config``
    raise ValueError(f"config key {key!r} expects {expected.__name__}; got {value!r} ({type(value).__name__})")

