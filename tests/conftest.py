"""Shared fixtures: tiny configs on the embedded digits and an in-process Flower simulation."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
import torch

from fl_cem.config import Config

# One thread per process: the Ray actors and the test process share two cores, and
# oversubscribed torch threads run many times slower than one. The actors and child processes
# read it from the environment: a developer's OMP_NUM_THREADS=2 gave the actors two threads and
# the test process one, and the Flower path then drifted from the in-process reference by more
# than the tolerance the tests compare them at (float sums in another order, which training amplifies).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

RAY_USER = re.compile(r"simulate\(|run_federated|run_simulation|ray\.init|subprocess")
"""Source text of a test module that starts Ray, Flower or a child process."""

TEST_IMPORT = re.compile(r"from (?:\.|tests\.)(test_\w+) import")
"""A test module's import of another's helpers (``channel_run`` starts Flower for its importer too)."""


def starts_ray(path: Path, seen: frozenset[Path] = frozenset()) -> bool:
    """Whether the test module at ``path``, or a test module it imports helpers from, matches :data:`RAY_USER`."""
    source = path.read_text()
    if RAY_USER.search(source):
        return True
    imported = (path.with_name(f"{name}.py") for name in TEST_IMPORT.findall(source))
    return any(starts_ray(other, seen | {path}) for other in imported if other not in seen and other.is_file())


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put every test of a module that starts Ray or Flower in one xdist group.

    ``tryfirst``: each xdist worker reads the marks in its own hook of the same name, which must
    run after this one. The grouping needs pytest below 9.2 (pyproject.toml): 9.2 keeps node ids
    where xdist 3.8 no longer writes the group into them, so every test went to any worker and a
    first CI run had two ``flwr run`` tests at once, both failing. The README runs the tests on two pytest-xdist workers with ``--dist loadgroup``: the group
    runs serially on one worker, so no two Ray clusters or SuperLinks (fixed ports) ever run at
    once, while the other worker takes the in-process tests, which run on one thread each.
    Without xdist the mark does nothing.
    """
    grouped: dict[Path, bool] = {}
    for item in items:
        if item.path not in grouped:
            grouped[item.path] = starts_ray(item.path)
        if grouped[item.path]:
            item.add_marker(pytest.mark.xdist_group("ray"))


TINY = {
    "run.name": "tiny",
    "data.source": "digits",
    "model.arch": "resnet20",
    "model.cut": 1,
    "data.train-subset": 300,
    "data.test-subset": 100,
    "train.batch-size": 32,
    "train.eval-batch-size": 256,
    "train.lr": 0.02,
    "train.epochs": 2,
    "federated.rounds": 2,
    "federated.local-epochs": 1,
    "cem.clusters-per-class": 2,
}


@pytest.fixture
def tiny(tmp_path: Path) -> Callable[..., Config]:
    """``tiny(**{"cem.lambda": 1.0})``: a small, fast config writing under ``tmp_path``."""

    def make(**overrides: Any) -> Config:
        return Config.from_flat({**TINY, "run.output-dir": str(tmp_path / "runs"), **overrides})

    return make


def simulate(cfg: Config, num_clients: int, mods: list | None = None) -> None:
    """Run the ServerApp and ClientApp in-process with ``num_clients`` supernodes."""
    from flwr.simulation import run_simulation

    from fl_cem.client_app import make_client_app
    from fl_cem.server_app import make_server_app

    overrides = cfg.to_flat()
    run_simulation(
        server_app=make_server_app(overrides),
        client_app=make_client_app(overrides, mods=mods),
        num_supernodes=num_clients,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2, "include_dashboard": False}},
    )


def simulate_killed_in_round_two(cfg: Config, num_clients: int) -> None:
    """Run ``cfg`` with every client failing in round 2, after round 1 was checkpointed, so that
    the run stops (``federated.min-clients``) and a second :func:`simulate` resumes it."""
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

    def all_fail_in_round_two(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if message.metadata.message_type == "train.step" and message.metadata.group_id == "2":
            raise RuntimeError("killed")
        return call_next(message, context)

    with pytest.raises(Exception, match="min-clients"):
        simulate(cfg, num_clients, mods=[all_fail_in_round_two])


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module: benchmarks/ is not a package, so load it by path, as it is run."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module
