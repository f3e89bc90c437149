"""Helpers the attacks share: seeded randomness, shuffled batches, batched inference.

Every source of randomness of an attack (weight init, batch order, the smashing noise the
attacker draws itself) comes from the global generators inside :func:`seeded`, so one seed
makes a whole fit repeatable without disturbing the caller's random state.
"""

from __future__ import annotations

from contextlib import contextmanager
from enum import IntEnum
from typing import Callable, Iterator

import torch
from torch import Tensor

EpochCallback = Callable[[int, dict[str, float]], None]
"""``on_epoch(epoch, metrics)``: called after each epoch (counted from 1) of an attack's fit."""


class Stream(IntEnum):
    """Independent random streams of one attack seed, so that e.g. seed 1's weights never reuse seed 0's batch order."""

    INIT = 0
    FIT = 1
    CRITIC_INIT = 2
    INVERT = 3
    WIRE = 4


@contextmanager
def seeded(seed: int, stream: Stream, device: torch.device) -> Iterator[None]:
    """Run a block with the CPU (and ``device``'s CUDA) generator seeded, restoring them afterwards.

    Parameters
    ----------
    seed : int
        The attack's seed.
    stream : Stream
        Which use of randomness the block is; each gets its own seed ``len(Stream) * seed + stream``.
    device : torch.device
        The attack's device; its CUDA generator is forked too, so that noise drawn on the GPU
        by the smashing function repeats.
    """
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        torch.manual_seed(len(Stream) * seed + stream)
        yield


def shuffled_batches(n: int, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    """Index tensors of one epoch in random order, from the global generator (seed it with :func:`seeded`).

    A final batch of a single image is dropped: batch norm cannot train on it.
    """
    order = torch.randperm(n, device=device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) > 1 or n == 1:
            yield idx


@torch.no_grad()
def map_batches(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """``fn`` over ``x`` in batches on ``device``; the result stays on ``device``."""
    return torch.cat([fn(x[start : start + batch_size].to(device)) for start in range(0, len(x), batch_size)])


def as_images(images: Tensor, device: torch.device) -> Tensor:
    """Images as float32 in [0, 1] on ``device``; uint8 input is scaled by 1/255."""
    if images.dtype == torch.uint8:
        return images.to(device).float().div_(255)
    return images.to(device, torch.float32)
