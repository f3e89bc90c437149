"""The one device decision (``resolve_device``), checked without a GPU.

A fake CUDA (monkeypatched ``torch.cuda``) checks what each ``run.device`` resolves to; a fake
Ray worker context checks that a client Ray gave no GPU stays on the CPU even where GPUs are
visible to it; the ``meta`` device, which has shapes but no data, runs a client's and the
server's training step to show that no tensor of the hot path is made on, or moved to, the CPU.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from fl_cem.config import Config
from fl_cem.registry import list_defenses
from fl_cem.training.schedule import Position
from fl_cem.training.setup import build_client, build_model, build_server, resolve_device

WORKER_MODE, SCRIPT_MODE = 1, 0

def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Make torch report ``count`` CUDA devices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def fake_ray(monkeypatch: pytest.MonkeyPatch, mode: int, gpu_ids: list[str]) -> None:
    """Make this process look like a Ray process in ``mode`` that Ray assigned ``gpu_ids``."""
    context = SimpleNamespace(worker=SimpleNamespace(mode=mode), get_accelerator_ids=lambda: {"GPU": gpu_ids, "TPU": []})
    ray = SimpleNamespace(is_initialized=lambda: True, get_runtime_context=lambda: context, WORKER_MODE=WORKER_MODE)
    monkeypatch.setitem(sys.modules, "ray", ray)


def test_names_resolve_with_two_fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    fake_gpus(monkeypatch, 2)
    monkeypatch.delitem(sys.modules, "ray", raising=False)

    # Execute
    resolved = {name: resolve_device(name) for name in ("auto", "cpu", "cuda", "cuda:1")}

    # Assert
    assert resolved == {"auto": torch.device("cuda"), "cpu": torch.device("cpu"), "cuda": torch.device("cuda"), "cuda:1": torch.device("cuda", 1)}


def test_an_index_beyond_the_visible_gpus_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    fake_gpus(monkeypatch, 1)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"^run\.device = 'cuda:1' but only 1 CUDA device\(s\) are visible") as caught:
        resolve_device("cuda:1")
    assert "\n" not in str(caught.value)


def test_without_cuda_auto_is_the_cpu_and_cuda_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    fake_gpus(monkeypatch, 0)

    # Execute / Assert
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^run\.device = 'cuda' but CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("mode", "gpu_ids", "expected"),
    [
        (WORKER_MODE, [], "cpu"),  # a client actor given no GPU, GPUs still visible (the trap)
        (WORKER_MODE, ["1"], "cuda"),  # a client actor given a (share of a) GPU
        (SCRIPT_MODE, [], "cuda"),  # the driver, where the server runs: outside Ray's accounting
    ],
)
def test_auto_follows_the_gpus_ray_assigned(monkeypatch: pytest.MonkeyPatch, mode: int, gpu_ids: list[str], expected: str) -> None:
    # Prepare: Ray with RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0 leaves CUDA_VISIBLE_DEVICES unset
    fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_ray(monkeypatch, mode, gpu_ids)

    # Execute
    device = resolve_device("auto")

    # Assert
    assert device == torch.device(expected)


@pytest.mark.parametrize("defense", list_defenses())
def test_a_training_step_runs_on_the_meta_device(defense: str) -> None:
    # Prepare: the paper's model (VGG11 c2 + bottleneck) on meta; meta tensors have no data, so
    # any CPU tensor meeting them in an op, or any .item()/.cpu() on them, raises. Adversarial
    # defenses play from the first step and PATROL prunes after it, so every branch runs.
    cfg = Config.from_flat(
        {"model.arch": "vgg11", "model.cut": 2, "model.bottleneck": 8, "defense.name": defense, "noise.sigma": 0.025,
         "defense.adversary-warmup": 0, "defense.prune-step": 1}
    )
    meta = torch.device("meta")
    model = build_model(cfg, (3, 32, 32), 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    client = build_client(cfg, model, 10, 128, meta, "federated")
    server = build_server(cfg, model, meta, "federated")
    x = torch.empty(4, 3, 32, 32, device=meta)
    y = torch.empty(4, dtype=torch.int64, device=meta)
    at = Position(0, 0, 10)

    # Execute: smash, serve, then the client's recompute and step, as a federated batch does
    fwd = client.forward(x, seed=1)
    grad_z, served = server.step(fwd.z, y, at)
    stepped = client.step(x, y, 1, grad_z, at)

    # Assert: everything stayed on meta; "count" is the batch size the host already knows
    assert fwd.z.shape == (4, 8, 8, 8) and fwd.z.device == meta and grad_z.device == meta
    metrics = {**served, **stepped}
    assert {k for k, v in metrics.items() if v.device != meta} == {"count"}
    assert all(p.device == meta for p in [*client.encoder.parameters(), *server.decoder.parameters()])
