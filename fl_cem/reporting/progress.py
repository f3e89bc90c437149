"""Progress bars with rate and ETA for epochs, rounds and attack training."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterator[T]:
    """``tqdm`` over ``items``; quiet when stderr is not a terminal unless FL_CEM_PROGRESS=1."""
    yield from tqdm(items, desc=desc, total=total, leave=leave, disable=not _terminal(), dynamic_ncols=True)


def eta_line(done: int, total: int, elapsed: float, what: str, before: int = 0) -> str:
    """One log line with progress and estimated time left, for logs that are not terminals.

    ``done`` of ``total`` units ran in ``elapsed`` seconds since this process started them;
    ``before`` units had finished before (a resumed run), so the line counts from the run's
    start ("round 3/10", not "round 1/8") while the ETA uses this process's own pace.
    """
    left = elapsed / max(done, 1) * (total - done)
    return f"{what} {before + done}/{before + total} | elapsed {elapsed:.0f}s | ETA {left:.0f}s"


class EpochProgress:
    """Progress of work reported by callbacks (attack epochs): a bar on a terminal, and elsewhere
    (logs, CI, ``flwr`` streams) an ETA line at most every ``every`` seconds and at the end, so
    long work never goes silent."""

    def __init__(self, total: int, desc: str, every: float = 15.0, log: Callable[[str], None] = print) -> None:
        self.total, self.desc, self.every, self.log = total, desc, every, log
        self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) if _terminal() else None
        self.began = self.last = time.perf_counter()
        self.done = 0

    def update(self, metrics: Mapping[str, float]) -> None:
        self.done += 1
        shown = {k: round(v, 5) for k, v in metrics.items()}
        if self.bar is not None:
            self.bar.set_postfix(shown)
            self.bar.update(1)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            details = ", ".join(f"{k} {v}" for k, v in shown.items())
            self.log(f"{self.desc}: {eta_line(self.done, self.total, now - self.began, 'epoch')}" + (f" | {details}" if details else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _terminal() -> bool:
    return sys.stderr.isatty() or os.environ.get("FL_CEM_PROGRESS") == "1"
