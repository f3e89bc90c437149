"""BatchLoader: coverage, determinism, random access and augmentation."""

from __future__ import annotations

import pytest
import torch

from fl_cem.data import BatchLoader, ImageSet

CPU = torch.device("cpu")


def _numbered(n: int, size: int = 4) -> ImageSet:
    """Image i is filled with the value 10 * i, so a batch tells which images it holds."""
    images = (torch.arange(n, dtype=torch.uint8) * 10).view(n, 1, 1, 1).expand(n, 1, size, size).contiguous()
    return ImageSet(images, torch.arange(n))


def _ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0] * 255 / 10).round().long().tolist()


def _epoch(loader: BatchLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_every_image_comes_once_per_epoch():
    # Prepare: 10 images in batches of 3 -> 3, 3, 3, 1
    loader = BatchLoader(_numbered(10), 3, CPU, shuffle=True, seed=0)

    # Execute
    batches = _epoch(loader)

    # Assert
    assert [len(y) for _, y in batches] == [3, 3, 3, 1] and len(loader) == 4
    assert sorted(i for x, _ in batches for i in _ids(x)) == list(range(10))
    assert all(_ids(x) == y.tolist() for x, y in batches)


def test_drop_last_leaves_out_the_short_batch():
    # Prepare
    loader = BatchLoader(_numbered(10), 3, CPU, shuffle=True, drop_last=True)

    # Execute
    batches = _epoch(loader)

    # Assert
    assert len(loader) == 3 and [len(y) for _, y in batches] == [3, 3, 3]


def test_order_and_augmentation_depend_only_on_seed_and_epoch():
    # Prepare: one loader walks epochs 0..2, a second jumps to epoch 2 as a resumed run would
    data = _numbered(12, size=8)
    walked = BatchLoader(data, 4, CPU, shuffle=True, augment=True, flip=True, seed=7)
    resumed = BatchLoader(data, 4, CPU, shuffle=True, augment=True, flip=True, seed=7)
    other_seed = BatchLoader(data, 4, CPU, shuffle=True, augment=True, flip=True, seed=8)

    # Execute
    epochs = []
    for epoch in range(3):
        walked.set_epoch(epoch)
        epochs.append(_epoch(walked))
    resumed.set_epoch(2)
    other_seed.set_epoch(2)

    # Assert
    for (x, y), (x2, y2) in zip(epochs[2], _epoch(resumed), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert [y.tolist() for _, y in epochs[1]] != [y.tolist() for _, y in epochs[2]]
    assert [y.tolist() for _, y in _epoch(other_seed)] != [y.tolist() for _, y in epochs[2]]


def test_batch_i_equals_the_ith_iterated_batch():
    # Prepare
    loader = BatchLoader(_numbered(11, size=8), 4, CPU, shuffle=True, augment=True, flip=True, seed=1)
    loader.set_epoch(5)
    iterated = _epoch(loader)

    # Execute
    fetched = [loader.batch(i) for i in reversed(range(len(loader)))][::-1]

    # Assert
    for (x, y), (x2, y2) in zip(iterated, fetched, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_batch_index_out_of_range_raises():
    # Prepare
    loader = BatchLoader(_numbered(4), 2, CPU, shuffle=False)

    # Execute / Assert
    with pytest.raises(IndexError):
        loader.batch(2)


def test_pixels_are_float_in_unit_range():
    # Prepare: values 0 and 255
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 4, 4).contiguous()
    loader = BatchLoader(ImageSet(images, torch.tensor([0, 1])), 2, CPU, shuffle=False, augment=True)

    # Execute
    x, y = loader.batch(0)

    # Assert
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_unaugmented_unshuffled_batches_are_the_stored_images():
    # Prepare
    data = _numbered(5)
    loader = BatchLoader(data, 5, CPU, shuffle=False)

    # Execute
    x, y = loader.batch(0)

    # Assert
    assert torch.equal(x, data.images.float() / 255) and torch.equal(y, data.labels)


def test_indices_restrict_the_loader_to_a_partition():
    # Prepare
    loader = BatchLoader(_numbered(10), 2, CPU, shuffle=True, indices=torch.tensor([1, 3, 8]))

    # Execute
    seen = [i for x, _ in loader for i in _ids(x)]

    # Assert
    assert sorted(seen) == [1, 3, 8] and len(loader) == 2


def _bright_pixel_positions(flip: bool) -> set[tuple[int, int]]:
    """Where the single bright pixel of an 8x8 image (at row 3, column 2) lands over 60 epochs."""
    images = torch.zeros((1, 1, 8, 8), dtype=torch.uint8)
    images[0, 0, 3, 2] = 255
    loader = BatchLoader(ImageSet(images, torch.tensor([0])), 1, CPU, shuffle=False, augment=True, flip=flip)
    positions = set()
    for epoch in range(60):
        loader.set_epoch(epoch)
        x, _ = loader.batch(0)
        assert float(x.sum()) == 1.0  # padding 1 never crops the pixel away
        row, col = divmod(int(x.flatten().argmax()), 8)
        positions.add((row, col))
    return positions


def test_crop_shifts_by_at_most_the_padding():
    # Prepare / Execute: padding for 8x8 is max(1, 8 // 8) = 1
    positions = _bright_pixel_positions(flip=False)

    # Assert: rows 2..4 and columns 1..3, and every shift occurs
    assert positions == {(r, c) for r in (2, 3, 4) for c in (1, 2, 3)}


def test_flip_mirrors_the_crop():
    # Prepare / Execute
    positions = _bright_pixel_positions(flip=True)

    # Assert: a flipped column j becomes 7 - j, so columns 4..6 appear besides 1..3
    assert {c for _, c in positions} == {1, 2, 3, 4, 5, 6}


def test_padding_scales_with_image_size():
    # Prepare / Execute
    paddings = [BatchLoader(_numbered(1, size), 1, CPU, shuffle=False, augment=True).padding for size in (4, 8, 32, 64)]

    # Assert: 4 pixels for 32x32 (the CIFAR recipe), at least 1
    assert paddings == [1, 1, 4, 8]
