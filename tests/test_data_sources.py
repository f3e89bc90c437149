"""ImageFolder trees and archives, the decoded cache, and the offline CIFAR error."""

from __future__ import annotations

import io
import re
import tarfile
import time
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image

from fl_cem.config import DataConfig
from fl_cem.data import imagefolder, load_source, load_splits

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_CEM_DATA", str(tmp_path / "cache"))
    load_source.cache_clear()
    load_splits.cache_clear()
    yield
    load_source.cache_clear()
    load_splits.cache_clear()


def _image(path: Path, color: tuple[int, int, int] | int, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _split_tree(root: Path) -> Path:
    """train/ 3 cats (red PNG) + 3 dogs (blue JPEG), test/ 2 + 2; class folders out of order on disk."""
    for split, count in (("train", 3), ("test", 2)):
        for i in range(count):
            _image(root / split / "dog" / f"{i}.jpg", BLUE)
            _image(root / split / "cat" / f"{i}.png", RED)
    return root


def _tarball(tree: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=arcname)
    return archive


def test_tarball_with_nested_train_and_test_folders_loads(tmp_path):
    # Prepare: the archive wraps the tree in one folder, like cifar10/train/<class>/...
    archive = _tarball(_split_tree(tmp_path / "tree"), tmp_path / "toy.tar.gz", arcname="toy")

    # Execute
    data = load_source("imagefolder", archive, False, 0)

    # Assert: classes in sorted folder order, so cat = 0 (red) and dog = 1 (blue)
    assert data.classes == ["cat", "dog"]
    assert (len(data.train), len(data.test)) == (6, 4)
    assert data.train.images.shape[1:] == (3, 8, 8) and data.train.images.dtype == torch.uint8
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.train.images[0, :, 0, 0].tolist() == [255, 0, 0]  # PNG is lossless
    assert int(data.train.images[5, 2].float().mean()) > 200  # JPEG blue stays blue


def test_second_load_reads_the_decoded_cache(tmp_path, monkeypatch):
    # Prepare
    archive = _tarball(_split_tree(tmp_path / "tree"), tmp_path / "toy.tar.gz", arcname="toy")
    first = load_source("imagefolder", archive, False, 0)
    load_source.cache_clear()

    def no_decoding(*args):
        raise AssertionError("images were decoded again")

    monkeypatch.setattr(imagefolder, "_decode_files", no_decoding)

    # Execute
    second = load_source("imagefolder", archive, False, 0)

    # Assert
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)


def test_tree_cache_is_refreshed_when_a_file_is_added(tmp_path):
    # Prepare
    tree = _split_tree(tmp_path / "tree")
    assert len(load_source("imagefolder", tree, False, 0).train) == 6
    load_source.cache_clear()
    _image(tree / "train" / "cat" / "new.png", RED)

    # Execute
    data = load_source("imagefolder", tree, False, 0)

    # Assert
    assert len(data.train) == 7


def test_single_class_tree_gets_a_stratified_test_split(tmp_path):
    # Prepare: 2 classes x 5 images, no train/test folders
    for i in range(5):
        _image(tmp_path / "flat" / "a" / f"{i}.png", RED)
        _image(tmp_path / "flat" / "b" / f"{i}.png", BLUE)
    cfg = DataConfig(source="imagefolder", root=str(tmp_path / "flat"), val_fraction=0.0)

    # Execute
    splits = load_splits(cfg, seed=0)

    # Assert: 20% of 10 = 2 test images, one per class
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 0, 2)
    assert sorted(splits.test.labels.tolist()) == [0, 1]


def test_corrupt_image_error_names_the_file(tmp_path):
    # Prepare
    tree = _split_tree(tmp_path / "tree")
    (tree / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")

    # Execute / Assert
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.jpg"):
        load_source("imagefolder", tree, False, 0)


def test_mixed_sizes_ask_for_data_image_size(tmp_path):
    # Prepare
    _image(tmp_path / "t" / "a" / "small.png", RED, size=(8, 8))
    _image(tmp_path / "t" / "b" / "large.png", BLUE, size=(12, 10))

    # Execute / Assert
    with pytest.raises(ValueError, match=r"different sizes.*data\.image-size"):
        load_source("imagefolder", tmp_path / "t", False, 0)
    assert load_source("imagefolder", tmp_path / "t", False, 6).train.images.shape == (2, 3, 6, 6)


def test_grayscale_tree_stays_one_channel_and_mixed_modes_become_rgb(tmp_path):
    # Prepare
    _image(tmp_path / "gray" / "a" / "0.png", 77, mode="L")
    _image(tmp_path / "gray" / "b" / "0.png", 200, mode="L")
    _image(tmp_path / "mixed" / "a" / "0.png", 77, mode="L")
    _image(tmp_path / "mixed" / "b" / "0.png", RED)

    # Execute
    gray = load_source("imagefolder", tmp_path / "gray", False, 0)
    mixed = load_source("imagefolder", tmp_path / "mixed", False, 0)

    # Assert: a gray pixel 77 becomes (77, 77, 77)
    assert gray.train.images.shape == (2, 1, 8, 8)
    assert mixed.train.images.shape == (2, 3, 8, 8)
    assert mixed.train.images[0, :, 0, 0].tolist() == [77, 77, 77]


def test_missing_root_names_the_path(tmp_path):
    # Prepare
    missing = tmp_path / "nowhere"

    # Execute / Assert
    with pytest.raises(FileNotFoundError, match=re.escape(f"data.root {missing} does not exist")):
        load_source("imagefolder", missing, False, 0)


def test_empty_tree_and_empty_class_folder_say_what_was_expected(tmp_path):
    # Prepare
    (tmp_path / "empty").mkdir()
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    (tmp_path / "hollow" / "cat" / "notes.txt").write_text("no images here")

    # Execute / Assert
    with pytest.raises(FileNotFoundError, match=r"no class folders in .*empty; expected"):
        load_source("imagefolder", tmp_path / "empty", False, 0)
    with pytest.raises(FileNotFoundError, match=r"class folder .*cat holds no images"):
        load_source("imagefolder", tmp_path / "hollow", False, 0)


def test_archive_member_escaping_the_target_is_refused(tmp_path):
    # Prepare: a member named ../escaped.png
    archive = tmp_path / "evil.tar.gz"
    payload = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(payload, format="PNG")
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.png")
        info.size = payload.getbuffer().nbytes
        payload.seek(0)
        tar.addfile(info, payload)

    # Execute / Assert
    with pytest.raises(ValueError, match="refusing to extract"):
        load_source("imagefolder", archive, False, 0)
    assert not list(tmp_path.rglob("escaped.png"))


def test_missing_cifar_without_download_says_where_and_how(tmp_path):
    # Prepare
    root = tmp_path / "cifar"

    # Execute
    with pytest.raises(FileNotFoundError) as caught:
        load_source("cifar10", root, False, 0)

    # Assert
    message = str(caught.value)
    assert str(root / "cifar-10-batches-py") in message
    assert "data.download = false" in message
    assert "data.source = 'imagefolder'" in message and ".tar.gz" in message


def test_failed_cifar_download_reports_the_reason(tmp_path, monkeypatch):
    # Prepare: no network, without touching it
    from torchvision.datasets import CIFAR10

    def offline(self):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(CIFAR10, "download", offline)

    # Execute
    with pytest.raises(FileNotFoundError) as caught:
        load_source("cifar10", tmp_path / "cifar", True, 0)

    # Assert
    assert "the download failed" in str(caught.value) and "no route to host" in str(caught.value)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"{SHARED_CIFAR} is not on this machine")
def test_shared_cifar_tarball_loads_and_reloads_from_cache():
    # Prepare / Execute: first load extracts and decodes 60k JPEGs
    data = load_source("imagefolder", SHARED_CIFAR, False, 0)
    load_source.cache_clear()
    start = time.perf_counter()
    again = load_source("imagefolder", SHARED_CIFAR, False, 0)
    reload_seconds = time.perf_counter() - start

    # Assert: torchvision's CIFAR10 class order and split sizes
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert (len(data.train), len(data.test)) == (50000, 10000)
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert torch.equal(data.test.images[:100], again.test.images[:100])
    assert reload_seconds < 2.0
