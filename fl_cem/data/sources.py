"""Data sources (``data.source``): scikit-learn digits, torchvision CIFAR, ImageFolder trees."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fl_cem.data.imagefolder import check_root, load_imagefolder
from fl_cem.data.imageset import ImageSet, SourceData

_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_RESIZE_CHUNK = 4096


def data_home() -> Path:
    """Where downloads, extracted archives and decoded caches go: ``$FL_CEM_DATA`` or ``~/.cache/fl-cem/data``."""
    configured = os.environ.get("FL_CEM_DATA")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fl-cem" / "data"


def check_source(source: str, root: Path | None, download: bool) -> None:
    """What can be known about a source without loading it: a missing ImageFolder root, or CIFAR
    neither on disk nor allowed to download. For a server that shares the clients' disk
    (the simulation engine), so a run stops before it waits for any client."""
    if source == "imagefolder" and root is not None:
        check_root(root)
    elif source in _CIFAR_FOLDERS and not download:
        folder = (root or data_home()) / _CIFAR_FOLDERS[source]
        if not folder.is_dir():
            raise FileNotFoundError(f"{source} not found: looked for {folder}, and downloading is off (data.download = false)")


@functools.lru_cache(maxsize=2)
def load_source(source: str, root: Path | None, download: bool, image_size: int) -> SourceData:
    """Load one source as uint8 tensors, once per process.

    Parameters
    ----------
    source : str
        ``digits``, ``cifar10``, ``cifar100`` or ``imagefolder`` (``data.source``).
    root : Path | None
        CIFAR: the folder holding or receiving the download (``None``: :func:`data_home`);
        imagefolder: the tree or archive; ignored for digits.
    download : bool
        Let torchvision download CIFAR when it is missing.
    image_size : int
        Square size to resize to; 0 keeps the native size.

    Returns
    -------
    SourceData
        The source's train (and official test, when it has one) images.
    """
    if source == "imagefolder":
        if root is None:
            raise ValueError("data.root must name an image folder or .tar.gz when data.source = 'imagefolder'")
        return load_imagefolder(root, image_size, data_home())
    if source == "digits":
        data = _digits()
    elif source in _CIFAR_FOLDERS:
        data = _cifar(source, root or data_home(), download)
    else:
        raise ValueError(f"unknown data.source {source!r}")
    if image_size and data.train.shape[1:] != (image_size, image_size):
        train = ImageSet(resize_images(data.train.images, image_size), data.train.labels)
        test = None if data.test is None else ImageSet(resize_images(data.test.images, image_size), data.test.labels)
        data = SourceData(train=train, test=test, classes=data.classes, natural=data.natural)
    return data


def _digits() -> SourceData:
    """scikit-learn's 1797 8x8 handwritten digits (values 0..16), bundled so tests run offline."""
    # Imported here: scikit-learn takes a second to import and only this source needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    # Mirrored digits are different (or no) digits, so flipping is not label-safe.
    return SourceData(ImageSet(images, labels), test=None, classes=[str(d) for d in range(10)], natural=False)


def _cifar(source: str, root: Path, download: bool) -> SourceData:
    """torchvision's CIFAR-10/100 pickles, with an error that says how to provide them offline."""
    # Imported here: torchvision.datasets takes seconds to import and only CIFAR needs it.
    from torchvision.datasets import CIFAR10, CIFAR100

    dataset_class = CIFAR10 if source == "cifar10" else CIFAR100
    folder = _CIFAR_FOLDERS[source]
    try:
        train = dataset_class(str(root), train=True, download=download)
        test = dataset_class(str(root), train=False, download=False)
    except (RuntimeError, OSError) as err:
        attempt = f"the download failed ({err})" if download else "downloading is off (data.download = false)"
        raise FileNotFoundError(
            f"{source} not found: looked for {root / folder}, and {attempt}. To provide it, put the extracted "
            f"{folder} folder into {root} (data.root or the FL_CEM_DATA environment variable choose another "
            "folder), or set data.source = 'imagefolder' with data.root pointing to an ImageFolder tree "
            "(train/<class>/*.jpg, test/<class>/*.jpg) or a .tar.gz of one"
        ) from err
    return SourceData(
        train=_as_imageset(train.data, train.targets),
        test=_as_imageset(test.data, test.targets),
        classes=list(train.classes),
        natural=True,
    )


def _as_imageset(images_nhwc: object, targets: list[int]) -> ImageSet:
    images = torch.as_tensor(images_nhwc).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(targets, dtype=torch.int64))


def resize_images(images: Tensor, size: int) -> Tensor:
    """Resize uint8 ``(N, C, H, W)`` images: shorter side to ``size``, then a centre crop.

    Same geometry as the ImageFolder path (which resizes with PIL per file), so
    ``data.image-size`` means the same for every source. Antialiased bilinear, like PIL.

    Parameters
    ----------
    images : Tensor
        uint8 images.
    size : int
        Target height and width.

    Returns
    -------
    Tensor
        uint8 images ``(N, C, size, size)``.
    """
    height, width = images.shape[2:]
    scale = size / min(height, width)
    new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
    top, left = (new_height - size) // 2, (new_width - size) // 2
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    # Chunks: the float copy of a whole resized CIFAR split would take gigabytes.
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].float()
        chunk = F.interpolate(chunk, size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + _RESIZE_CHUNK] = chunk[:, :, top : top + size, left : left + size].round().clamp(0, 255)
    return out
