"""What Ray really shows a client actor, on a Ray that declares a GPU this machine lacks.

Ray trusts ``num_gpus`` at ``ray.init``, assigns its ids and sets ``CUDA_VISIBLE_DEVICES`` in
each actor as it would on a GPU machine (``ray/_private/utils.py::set_visible_accelerator_ids``),
so the trap and its fix can be checked here: with ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` an
actor given no GPU keeps the variable it inherited (here: unset, every GPU visible), and
``resolve_device("auto")`` must still choose the CPU for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def probe() -> dict[str, object]:
    """In an actor: CUDA_VISIBLE_DEVICES and what ``auto`` resolves to if torch saw a GPU."""
    import torch

    from fl_cem.training.setup import ray_gpu_ids, resolve_device

    torch.cuda.is_available = lambda: True  # this process is a throw-away actor
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "ids": ray_gpu_ids(), "auto": str(resolve_device("auto"))}


@pytest.mark.slow
def test_an_actor_given_no_gpu_resolves_auto_to_the_cpu() -> None:
    # Prepare: the trap's setting, on a fresh local Ray with one declared GPU
    ray = pytest.importorskip("ray")
    env = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        Probe = ray.remote(num_cpus=0)(type("Probe", (), {"probe": lambda self: probe()}))

        # Execute
        without = ray.get(Probe.options(num_gpus=0).remote().probe.remote())
        with_share = ray.get(Probe.options(num_gpus=0.5).remote().probe.remote())
        default = ray.get(Probe.options(num_gpus=0, runtime_env={"env_vars": {**env, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}}).remote().probe.remote())
    finally:
        ray.shutdown()

    # Assert
    assert without == {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "ids": [], "auto": "cpu"}  # inherited: GPUs visible, yet the CPU
    assert with_share == {"visible": "0", "ids": ["0"], "auto": "cuda"}
    assert default["visible"] == "" and default["auto"] == "cpu"  # Ray's default hides the GPUs
