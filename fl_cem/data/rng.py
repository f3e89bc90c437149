"""Keyed random streams: every random choice in the data layer is re-creatable from its keys."""

from __future__ import annotations

import numpy as np
import torch

_UINT64 = (1 << 64) - 1

# Stream purposes, so that e.g. the validation carve and the train subset of one seed differ.
TEST_SPLIT = 1
TEST_SUBSET = 2
TRAIN_SUBSET = 3
VAL_SPLIT = 4
EPOCH_ORDER = 5
AUGMENT = 6
IID_ORDER = 7
LOCAL_TEST = 8


def generator(*keys: int) -> torch.Generator:
    """A CPU generator whose stream depends only on ``keys``.

    NumPy's ``SeedSequence`` hashes the whole key tuple, so neighbouring keys such as
    (seed 0, epoch 1) and (seed 1, epoch 0) get unrelated streams, unlike ``seed + epoch``.
    Because a stream is a pure function of its keys, a resumed run or a client that has to
    re-create batch ``i`` of epoch ``e`` gets exactly the numbers it had the first time. The
    generator lives on the CPU so the same keys give the same data on every device.

    Parameters
    ----------
    *keys : int
        Any integers (negative ones are taken modulo 2**64).

    Returns
    -------
    torch.Generator
        A freshly seeded CPU generator.
    """
    state = np.random.SeedSequence([as_uint64(key) for key in keys]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def as_uint64(seed: int) -> int:
    """``seed`` modulo 2**64: NumPy seeds must be non-negative, run seeds need not be."""
    return seed & _UINT64
