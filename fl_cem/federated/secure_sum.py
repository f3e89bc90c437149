"""Secure aggregation of the CEM statistics: the server learns the clients' sum, not their parts.

With ``cem.federation = global`` every client uploads per-cluster counts, sums and second
moments of its features, from which a curious server reads the client's class-conditional
feature means (and decodes them into class prototypes, ``fl_cem/attacks/cem_stats.py``). The
merge needs only the sum (:meth:`MixtureStats.merge`), so the uploads can be masked as in
Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS
2017): each value is encoded in fixed point as a 64-bit word, and each pair of clients adds
and subtracts one shared uniform mask (mod 2^64). A single upload is then uniform on 2^64
whatever the data; the masks cancel exactly in the sum over all the pair's clients, so the
merged statistics equal the unmasked ones up to the fixed-point rounding (2^-25 per value and
client).

What this simulation leaves out: the pair seeds stand in for Diffie-Hellman agreed keys and are
derived from ``run.seed``, which the simulated server could compute (the protection shown is the
protocol's, not a deployment's); there is no dropout recovery (Shamir shares of the seeds), so
every client asked must answer or the sum is refused.
"""

from __future__ import annotations

import hashlib
from typing import Collection, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

FRACTION_BITS = 24
"""Fixed-point fraction bits of float values: resolution 6e-8 (float32's relative precision), range
+-5e11 (a moment sum of 60,000 features of size 3,000)."""


def pair_seed(key: int, nonce: str, a: int, b: int, name: str) -> int:
    """The seed clients ``a`` and ``b`` share for tensor ``name`` of one upload (``nonce``: the
    refit and step, so that no mask is reused; a reused mask would reveal differences of uploads)."""
    low, high = sorted((a, b))
    digest = hashlib.sha256(f"{key}|{nonce}|{low}|{high}|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def encode(x: Tensor, integer: bool) -> np.ndarray:
    """Values as 64-bit words: integers as they are, floats as ``round(x * 2^FRACTION_BITS)``."""
    values = x.detach().cpu().double().numpy()
    scaled = values if integer else np.rint(values * 2.0**FRACTION_BITS)
    return scaled.astype(np.int64).view(np.uint64)


def decode(words: np.ndarray, integer: bool) -> Tensor:
    """Inverse of :func:`encode` (of a sum of encodings, once the masks have cancelled)."""
    signed = torch.from_numpy(words.view(np.int64).copy())
    return signed if integer else signed.double() / 2.0**FRACTION_BITS


def mask(tensors: Mapping[str, Tensor], me: int, peers: Collection[int], key: int, nonce: str, integers: Collection[str] = ()) -> dict[str, Tensor]:
    """One client's masked upload: each tensor encoded (:func:`encode`) plus, per other peer, the
    pair's mask (added by the lower partition id, subtracted by the higher), mod 2^64.

    Parameters
    ----------
    tensors
        What the client would send in the clear.
    me, peers
        This client's partition id and every partition id of the sum, this one included.
    key, nonce
        The pair seeds' secret and this upload's identity (:func:`pair_seed`).
    integers
        Names of integer tensors (counts), encoded without fraction bits.

    Returns
    -------
    dict[str, Tensor]
        int64 tensors (the words' bits), shaped as the inputs: uniform noise to anyone without the other uploads.
    """
    if me not in peers:
        raise ValueError(f"client {me} is not among the peers {sorted(peers)} of its own upload")
    out = {}
    for name, x in tensors.items():
        words = encode(x, name in integers)
        for peer in peers:
            if peer == me:
                continue
            draw = np.random.default_rng(pair_seed(key, nonce, me, peer, name)).integers(0, 2**64, size=words.shape, dtype=np.uint64, endpoint=False)
            words = words + draw if me < peer else words - draw  # uint64 arithmetic wraps: mod 2^64
        out[name] = torch.from_numpy(words.view(np.int64).copy())
    return out


def unmask_sum(uploads: Sequence[Mapping[str, Tensor]], integers: Collection[str] = ()) -> dict[str, Tensor]:
    """The sum of every peer's masked upload, decoded: the masks cancel, the clear values add.

    Integer tensors come back as int64, the others as float64.
    """
    if not uploads:
        raise ValueError("unmask_sum needs at least one upload")
    out = {}
    for name in uploads[0]:
        total = np.zeros(uploads[0][name].shape, dtype=np.uint64)
        for upload in uploads:
            total = total + upload[name].numpy().view(np.uint64)
        out[name] = decode(total, name in integers)
    return out
