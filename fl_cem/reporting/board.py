"""TensorBoard logging: scalars grouped by prefix and image grids, one writer per run."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid


class Board:
    """A thin wrapper over ``SummaryWriter`` that takes the dicts our steps return."""

    def __init__(self, log_dir: Path) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def images(self, tag: str, images: Tensor, step: int, nrow: int = 8) -> None:
        """Log a batch of images in [0, 1] as one grid."""
        self.writer.add_image(tag, make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow), step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
