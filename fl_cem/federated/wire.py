"""Packing tensors and client state into Flower records, and back.

Tensors travel in ``ArrayRecord``s (numpy arrays, no pickling); per-client state that is not a
flat tensor dict (optimizer state, cursor, CEM statistics) travels as ``torch.save`` bytes in a
``ConfigRecord`` and is read back with ``weights_only=True``, so a message can carry tensors,
numbers, strings and containers but never code.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from torch import Tensor


def to_record(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """Tensors -> ArrayRecord (moved to CPU; detached)."""
    return ArrayRecord({key: Array(np.ascontiguousarray(t.detach().cpu().numpy())) for key, t in tensors.items()})


def from_record(record: ArrayRecord, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """ArrayRecord -> tensors on ``device``."""
    return {key: torch.from_numpy(array.numpy().copy()).to(device) for key, array in record.items()}


def to_bytes(obj: Any) -> bytes:
    """Serialise tensors/containers/numbers (no code) for a ConfigRecord."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Any:
    """Inverse of :func:`to_bytes`; ``weights_only`` refuses anything but data."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def pack_state(state: Any) -> ConfigRecord:
    """Client state (see ``SplitClient.state``) as one bytes field of a ConfigRecord."""
    return ConfigRecord({"blob": to_bytes(state)})


def unpack_state(record: ConfigRecord) -> Any:
    return from_bytes(bytes(record["blob"]))  # type: ignore[arg-type]


def metric_record(values: Mapping[str, float]) -> MetricRecord:
    return MetricRecord({key: float(value) for key, value in values.items()})
