"""Progress bars with rate and ETA for epochs, rounds and attack training."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterator[T]:
    """``tqdm`` over ``items``; quiet when stderr is not a terminal unless FL_CEM_PROGRESS=1."""
    enabled = sys.stderr.isatty() or os.environ.get("FL_CEM_PROGRESS") == "1"
    yield from tqdm(items, desc=desc, total=total, leave=leave, disable=not enabled, dynamic_ncols=True)


def eta_line(done: int, total: int, elapsed: float, what: str) -> str:
    """One log line with progress and estimated time left, for logs that are not terminals."""
    left = elapsed / max(done, 1) * (total - done)
    return f"{what} {done}/{total} | elapsed {elapsed:.0f}s | ETA {left:.0f}s"


def progress_bar(total: int, desc: str) -> tqdm:
    """A manual bar (``bar.update(1)``) for work reported by callbacks, such as attack epochs."""
    enabled = sys.stderr.isatty() or os.environ.get("FL_CEM_PROGRESS") == "1"
    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)
