"""TensorBoard logging: scalars grouped by prefix and image grids, one writer per run; a sweep's HParams view."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from fl_cem.reporting.collect import RunRecord
from fl_cem.reporting.table import Table


class Board:
    """A thin wrapper over ``SummaryWriter`` that takes the dicts our steps return."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> SummaryWriter:
        """Opened at the first write: work killed before it logged anything leaves no empty event file."""
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def images(self, tag: str, images: Tensor, step: int, nrow: int = 8) -> None:
        """Log a batch of images in [0, 1] as one grid."""
        self.writer.add_image(tag, make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow), step)

    def channels(self, tag: str, z: Tensor, step: int, count: int = 16) -> None:
        """The first channel of ``count`` smashed feature maps, each scaled to [0, 1]: what crosses the wire."""
        maps = z[:count, :1].detach().float().cpu()
        low = maps.amin(dim=(1, 2, 3), keepdim=True)
        high = maps.amax(dim=(1, 2, 3), keepdim=True)
        self.images(tag, (maps - low) / (high - low + 1e-8), step)

    def hparams(self, config: Mapping[str, bool | int | float | str], metrics: Mapping[str, float]) -> None:
        """The run's config beside its final figures, for TensorBoard's HPARAMS tab across runs."""
        self.writer.add_hparams(dict(config), {f"final/{k}": v for k, v in metrics.items() if v is not None}, run_name="hparams")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


def write_hparams(records: Sequence[RunRecord], table: Table, folder: Path) -> None:
    """One HParams run per finished cell: its execution, method, CEM and other keys, seed, numbers.

    The folder is rewritten from scratch so that a re-run report does not duplicate runs.
    """
    shutil.rmtree(folder, ignore_errors=True)
    keys = [*table.roles.method, *table.roles.cem, *table.roles.other]
    with SummaryWriter(log_dir=str(folder)) as writer:
        for record in records:
            if record.status != "done":
                continue
            hparams: dict[str, Any] = {"execution": record.execution, "seed": record.seed if record.seed is not None else -1}
            hparams.update({k: record.config.get(k) for k in keys if isinstance(record.config.get(k), (bool, int, float, str))})
            metrics = {f"hparam/{k}": v for k, v in record.values.items() if math.isfinite(v)}
            writer.add_hparams(hparams, metrics, run_name=record.name)
