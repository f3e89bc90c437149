"""ImageFolder trees and ``.tar.gz`` archives of them, decoded once into uint8 tensors.

The layout is torchvision's ``ImageFolder``: one folder per class, classes numbered in sorted
folder order, so the shared CIFAR-10 JPEG tarball gets torchvision's CIFAR10 label indices.
Decoding 60k small JPEGs costs seconds, so the decoded tensors are cached as a ``.pt`` file;
later processes (every Flower client is one) load that file instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import multiprocessing
import os
import pickle
import shutil
import tarfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fl_cem.data.imageset import ImageSet, SourceData

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File endings read as images (torchvision's ``IMG_EXTENSIONS``); other files are ignored."""

_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_DECODE_CHUNK = 1024
# Below this many files, starting worker processes (each imports torch) costs more than it saves.
_PARALLEL_MIN_FILES = 4096


@dataclass(frozen=True)
class _Listing:
    """Image files found in a tree, per split (``train``/``test``, or ``all`` for one tree)."""

    classes: list[str]
    files: dict[str, list[Path]]
    labels: dict[str, list[int]]


def check_root(root: Path) -> None:
    """Fail with what was expected when ``data.root`` names nothing (cheap: no decoding)."""
    if not root.exists():
        raise FileNotFoundError(
            f"data.root {root} does not exist; expected an ImageFolder tree (train/<class>/*.jpg and "
            "test/<class>/*.jpg, or <class>/*.jpg) or a .tar.gz of one"
        )


def load_imagefolder(root: Path, image_size: int, cache_home: Path) -> SourceData:
    """Load an ImageFolder tree, or a tar archive of one, as uint8 tensors.

    Accepted layouts (possibly nested one folder deep, as in ``cifar10/train/...``):
    ``train/<class>/<image>`` plus ``test/<class>/<image>``, or a single ``<class>/<image>``
    tree, which has no test split (the caller carves one). An archive is extracted once into
    ``cache_home``, refusing members that would land outside the target folder.

    Parameters
    ----------
    root : Path
        The tree, or a ``.tar``/``.tar.gz`` file holding one.
    image_size : int
        Square size to resize to (shorter side, then centre crop); 0 keeps the native size,
        which then has to be the same for every image.
    cache_home : Path
        Folder for extracted archives and decoded-tensor caches.

    Returns
    -------
    SourceData
        Train (and test, when the tree has one) images with labels in sorted folder order.
    """
    check_root(root)
    archive = root.is_file()
    if archive and not tarfile.is_tarfile(root):
        raise ValueError(f"data.root {root} is a file but not a tar archive; expected an ImageFolder tree or a .tar.gz")
    work = cache_home / "imagefolder" / _cache_key(root, archive)
    cache_file = work / f"decoded-{image_size or 'native'}.pt"
    if archive:
        # Fast path: the cache of an archive is keyed by the archive itself, no walk needed.
        cached = _read_cache(cache_file, work.name)
        if cached is not None:
            return cached
    with _exclusive(work.with_name(work.name + ".lock")):
        tree = _extract(root, work / "tree") if archive else root
        listing = _list_images(tree)
        fingerprint = work.name if archive else _fingerprint(tree, listing)
        data = _read_cache(cache_file, fingerprint)
        if data is None:
            data = _decode_listing(listing, image_size, tree)
            _write_cache(cache_file, data, fingerprint)
    return data


def _cache_key(root: Path, archive: bool) -> str:
    """Archives by name, size and mtime; trees by resolved path (their content is fingerprinted)."""
    if archive:
        stat = root.stat()
        return f"{root.name}-{stat.st_size}-{stat.st_mtime_ns}"
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return f"{root.resolve().name}-{digest}"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an inter-process lock: Flower starts many clients at once and one should decode."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _extract(archive: Path, target: Path) -> Path:
    """Unpack ``archive`` into ``target`` once; an interrupted run leaves only a ``.partial`` folder."""
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            # The "data" filter rejects absolute paths, "..", links leaving the folder and devices.
            tar.extractall(partial, filter="data")
    except tarfile.FilterError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"refusing to extract {archive}: {err}") from err
    except (tarfile.TarError, OSError, EOFError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"cannot extract {archive}: {err}") from err
    partial.rename(target)
    return target


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _list_images(tree: Path) -> _Listing:
    """Find the layout of ``tree`` and every image file in it."""
    subdirs = _visible_dirs(tree)
    has_images = any(p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS) for p in tree.iterdir())
    if len(subdirs) == 1 and not has_images and _visible_dirs(subdirs[0]):
        tree = subdirs[0]  # archives usually wrap the tree in one folder: cifar10/train/...
    train, test = tree / "train", tree / "test"
    if train.is_dir() and test.is_dir() and _visible_dirs(train) and _visible_dirs(test):
        classes, train_files, train_labels = _scan_classes(train)
        test_classes, test_files, test_labels = _scan_classes(test)
        if test_classes != classes:
            raise ValueError(
                f"{train} and {test} must hold the same class folders so labels agree; "
                f"train has {classes}, test has {test_classes}"
            )
        split_files = {"train": train_files, "test": test_files}
        return _Listing(classes, split_files, {"train": train_labels, "test": test_labels})
    classes, files, labels = _scan_classes(tree)
    return _Listing(classes, {"all": files}, {"all": labels})


def _scan_classes(folder: Path) -> tuple[list[str], list[Path], list[int]]:
    """Class folders of ``folder`` in sorted order (torchvision's numbering) and their images."""
    class_dirs = _visible_dirs(folder)
    if not class_dirs:
        raise FileNotFoundError(
            f"no class folders in {folder}; expected {folder}/<class>/<image> "
            f"(or train/<class>/... and test/<class>/...) with images ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(
            Path(parent, name)
            for parent, _, names in os.walk(class_dir, followlinks=True)
            for name in names
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
        )
        if not found:
            raise FileNotFoundError(
                f"class folder {class_dir} holds no images (looked for files ending in {', '.join(IMAGE_EXTENSIONS)})"
            )
        files.extend(found)
        labels.extend([label] * len(found))
    return [d.name for d in class_dirs], files, labels


def _fingerprint(tree: Path, listing: _Listing) -> str:
    """Hash of every file's path, size and mtime: a changed tree must not reuse a stale cache."""
    digest = hashlib.sha1()
    for path in itertools.chain.from_iterable(listing.files.values()):
        stat = path.stat()
        digest.update(f"{path.relative_to(tree)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode_listing(listing: _Listing, image_size: int, tree: Path) -> SourceData:
    """Decode every listed image and split the stacked tensor back into train/test."""
    paths = list(itertools.chain.from_iterable(listing.files.values()))
    images = _stack(_decode_files(paths, image_size), paths, tree)
    sets: dict[str, ImageSet] = {}
    start = 0
    for split, files in listing.files.items():
        stop = start + len(files)
        sets[split] = ImageSet(images[start:stop].clone(), torch.tensor(listing.labels[split], dtype=torch.int64))
        start = stop
    train = sets["train"] if "train" in sets else sets["all"]
    return SourceData(train=train, test=sets.get("test"), classes=listing.classes, natural=True)


def _decode_files(paths: list[Path], image_size: int) -> list[np.ndarray]:
    """Decode on all usable cores when there are enough files for that to pay off."""
    chunks = [paths[i : i + _DECODE_CHUNK] for i in range(0, len(paths), _DECODE_CHUNK)]
    workers = min(len(os.sched_getaffinity(0)), 8)
    # fork, not spawn/forkserver: those re-import the caller's main script in every worker, which
    # re-runs a script without a __main__ guard (and here would wait on the cache lock forever).
    # The workers run only PIL and NumPy, none of the threads (torch, Ray) a fork copies mid-work.
    # A daemon process (e.g. a multiprocessing worker) may not start children of its own.
    parallel = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
    if parallel and workers > 1 and len(paths) >= _PARALLEL_MIN_FILES:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_decode_chunk, chunks, itertools.repeat(image_size)))
    else:
        parts = [_decode_chunk(chunk, image_size) for chunk in chunks]
    return [array for part in parts for array in part]


def _decode_chunk(paths: list[Path], image_size: int) -> list[np.ndarray]:
    """Decode images to ``(H, W)`` (grayscale) or ``(H, W, 3)`` uint8 arrays."""
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as file:
                image = file.convert("L" if file.mode in _GRAY_MODES else "RGB")
            if image_size:
                image = _resize(image, image_size)
            arrays.append(np.asarray(image))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot decode image {path}: {err}") from err
    return arrays


def _resize(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, then a centre crop: keeps the aspect ratio, as torchvision's Resize+CenterCrop."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _stack(arrays: list[np.ndarray], paths: list[Path], tree: Path) -> torch.Tensor:
    """Stack into ``(N, C, H, W)``; RGB when any image has colour, else one channel."""
    first_size = arrays[0].shape[:2]
    for array, path in zip(arrays, paths, strict=True):
        if array.shape[:2] != first_size:
            raise ValueError(
                f"images in {tree} have different sizes ({paths[0]} is {first_size[1]}x{first_size[0]}, "
                f"{path} is {array.shape[1]}x{array.shape[0]}); set data.image-size to resize them all to one "
                "square size"
            )
    if any(array.ndim == 3 for array in arrays):
        # PIL's L -> RGB conversion repeats the gray value, so this equals converting the file.
        arrays = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
        stacked = np.stack(arrays).transpose(0, 3, 1, 2)
    else:
        stacked = np.stack(arrays)[:, None]
    return torch.from_numpy(np.ascontiguousarray(stacked))


def _read_cache(cache_file: Path, fingerprint: str) -> SourceData | None:
    """The cached tensors, or ``None`` when there is no cache or it is stale or unreadable."""
    if not cache_file.is_file():
        return None
    try:
        payload = torch.load(cache_file, weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None
    if payload.get("fingerprint") != fingerprint:
        return None
    test = ImageSet(payload["test_images"], payload["test_labels"]) if "test_images" in payload else None
    return SourceData(
        train=ImageSet(payload["train_images"], payload["train_labels"]),
        test=test,
        classes=list(payload["classes"]),
        natural=True,
    )


def _write_cache(cache_file: Path, data: SourceData, fingerprint: str) -> None:
    """Write through a temporary file so readers never see half a cache."""
    payload: dict[str, object] = {
        "fingerprint": fingerprint,
        "classes": data.classes,
        "train_images": data.train.images,
        "train_labels": data.train.labels,
    }
    if data.test is not None:
        payload["test_images"] = data.test.images
        payload["test_labels"] = data.test.labels
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_name(cache_file.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, cache_file)
