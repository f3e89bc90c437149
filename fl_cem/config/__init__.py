"""Typed, validated run configuration: the one place where defaults live.

Every key a user can set is a field of one of the frozen section dataclasses, one file per
section (``sections.py``: run, data, partition, model, train, noise; ``cem.py``; ``defense.py``;
``attack.py``; ``federated.py``; ``malicious.py``); ``config.py`` joins them into :class:`Config`, ``flat.py``
holds the flat-key plumbing.
Flower passes run-config keys flattened (``"cem.lambda"``), the centralized CLI reads the
same keys from a TOML file and ``--set`` overrides, and both go through
:meth:`Config.from_flat`, so a typo or a bad value fails the same way, before any work starts.

``pyproject.toml``'s ``[tool.flwr.app.config]`` must declare every key (``flwr run`` rejects
undeclared keys); ``tests/test_config.py`` checks that it mirrors these defaults exactly.
"""
from fl_cem.config.attack import (
    ATTACK_MODES,
    ATTACK_NETWORKS,
    ATTACK_SCHEDULES,
    AttackConfig,
)
from fl_cem.config.cem import CEM_FEDERATION, CEM_VARIANTS, COVARIANCES, CEMConfig
from fl_cem.config.checks import Scalar
from fl_cem.config.config import (
    EXECUTION_KEYS,
    TRAINING_ATTACK_KEYS,
    VERDICT_KEYS,
    Config,
    field_docs,
)
from fl_cem.config.defense import ARL_LOSSES, DefenseConfig
from fl_cem.config.federated import SERVE_ORDERS, VARIANTS, FederatedConfig
from fl_cem.config.flat import flatten, parse_override
from fl_cem.config.malicious import MALICIOUS_ATTACKS, MaliciousConfig
from fl_cem.config.sections import (
    ARCHS,
    DATA_SOURCES,
    PARTITIONERS,
    SCHEDULES,
    DataConfig,
    ModelConfig,
    NoiseConfig,
    PartitionConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "ARCHS", "ARL_LOSSES", "ATTACK_MODES", "ATTACK_NETWORKS", "ATTACK_SCHEDULES", "CEM_FEDERATION", "CEM_VARIANTS",
    "COVARIANCES", "DATA_SOURCES", "EXECUTION_KEYS", "MALICIOUS_ATTACKS", "PARTITIONERS", "SCHEDULES", "SERVE_ORDERS", "TRAINING_ATTACK_KEYS", "VERDICT_KEYS",
    "VARIANTS", "AttackConfig", "CEMConfig", "Config", "DataConfig", "DefenseConfig", "FederatedConfig", "MaliciousConfig", "ModelConfig",
    "NoiseConfig", "PartitionConfig", "RunConfig", "Scalar", "TrainConfig", "field_docs", "flatten", "parse_override",
]
