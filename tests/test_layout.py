"""Memory layout: channels-last where it pays, and the same numbers whichever layout arrives."""

from __future__ import annotations

import copy

import pytest
import torch

from fl_cem.config import Config
from fl_cem.training.layout import model_format
from fl_cem.training.setup import build_client, build_model, build_server
from fl_cem.training.schedule import Position

CPU = torch.device("cpu")


def test_cpu_runs_channels_last_from_32_pixels_and_cuda_keeps_the_default() -> None:
    assert model_format(CPU, (3, 32, 32)) == torch.channels_last
    assert model_format(CPU, (1, 8, 8)) == torch.contiguous_format
    assert model_format(torch.device("cuda"), (3, 32, 32)) == torch.contiguous_format


@pytest.mark.parametrize(("arch", "cut"), [("vgg11", 2), ("resnet20", 1)])
def test_server_step_does_not_depend_on_the_layout_smashed_data_arrives_in(arch: str, cut: int) -> None:
    # Prepare: CIFAR-sized model on the CPU (channels-last), two copies of the server
    cfg = Config.from_flat({"model.arch": arch, "model.cut": cut, "run.device": "cpu"})
    model = build_model(cfg, (3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)
    client = build_client(cfg, model, 10, 100, CPU)
    server = build_server(cfg, model, CPU)
    other = copy.deepcopy(server)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    z = client.encoder(x).detach()
    # Execute: the encoder's own output, and the contiguous array a message delivers
    grad, _ = server.step(z, y, Position(0))
    grad_wire, _ = other.step(z.contiguous(), y, Position(0))
    # Assert
    assert server.memory_format == torch.channels_last
    assert z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()
    assert torch.equal(grad, grad_wire)
    for a, b in zip(server.decoder.parameters(), other.decoder.parameters()):
        assert torch.equal(a, b)
