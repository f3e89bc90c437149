"""Splits, subsets and pixel statistics of fl_cem.data."""

from __future__ import annotations

import pytest
import torch

from fl_cem.config import DataConfig
from fl_cem.data import ImageSet, SourceData, load_source, load_splits, pixel_statistics, stratified_split
from fl_cem.data import splits as splits_module


@pytest.fixture(autouse=True)
def _fresh_caches():
    load_source.cache_clear()
    load_splits.cache_clear()
    yield
    load_source.cache_clear()
    load_splits.cache_clear()


def _numbered_source(per_class: int, num_classes: int) -> SourceData:
    """Images whose first two pixels spell their index, so splits can be traced back."""
    n = per_class * num_classes
    images = torch.zeros((n, 1, 2, 2), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    labels = torch.arange(n) % num_classes
    return SourceData(ImageSet(images, labels), test=None, classes=[str(c) for c in range(num_classes)], natural=True)


def _indices(images: ImageSet) -> list[int]:
    pixels = images.images[:, 0, 0].long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


@pytest.fixture
def numbered(monkeypatch):
    source = _numbered_source(per_class=50, num_classes=4)
    monkeypatch.setattr(splits_module, "load_source", lambda *args: source)
    return source


def test_splits_are_disjoint_and_cover_the_source(numbered):
    # Prepare: 200 images, no official test split
    cfg = DataConfig(val_fraction=0.1)

    # Execute
    splits = load_splits(cfg, seed=0)

    # Assert: test = 20% of 200, val = 10% of the remaining 160
    train, val, test = _indices(splits.train), _indices(splits.val), _indices(splits.test)
    assert (len(train), len(val), len(test)) == (144, 16, 40)
    assert sorted(train + val + test) == list(range(200))


def test_carved_splits_keep_class_proportions(numbered):
    # Prepare: 4 balanced classes of 50
    cfg = DataConfig(val_fraction=0.1)

    # Execute
    splits = load_splits(cfg, seed=0)

    # Assert: 40 test images -> 10 per class; 16 val images -> 4 per class
    assert torch.bincount(splits.test.labels).tolist() == [10, 10, 10, 10]
    assert torch.bincount(splits.val.labels).tolist() == [4, 4, 4, 4]


def test_test_split_ignores_the_run_seed_but_validation_follows_it(numbered):
    # Prepare
    cfg = DataConfig(val_fraction=0.1)

    # Execute
    first, second = load_splits(cfg, seed=0), load_splits(cfg, seed=1)

    # Assert
    assert _indices(first.test) == _indices(second.test)
    assert _indices(first.val) != _indices(second.val)
    assert _indices(load_splits(cfg, seed=0).val) == _indices(first.val)


def test_subsets_take_the_requested_counts_before_the_validation_carve(numbered):
    # Prepare
    cfg = DataConfig(val_fraction=0.1, train_subset=100, test_subset=20)

    # Execute
    splits = load_splits(cfg, seed=0)

    # Assert: 100 training images -> 10 validation + 90 training
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
    assert torch.bincount(splits.test.labels).tolist() == [5, 5, 5, 5]


def test_subset_larger_than_the_split_names_the_key(numbered):
    # Prepare: 160 training images exist
    cfg = DataConfig(train_subset=161)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"data\.train-subset = 161 exceeds the 160"):
        load_splits(cfg, seed=0)


def test_stratified_split_rounds_by_largest_remainder():
    # Prepare: classes of 5, 3 and 2; picking 5 gives quotas 2.5, 1.5, 1.0
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)

    # Execute
    rest, picked = stratified_split(labels, 5, torch.Generator().manual_seed(0))

    # Assert: floors 2, 1, 1 and the one left over goes to the first of the tied remainders
    assert torch.bincount(labels[picked], minlength=3).tolist() == [3, 1, 1]
    assert sorted(rest.tolist() + picked.tolist()) == list(range(10))


def test_pixel_statistics_match_hand_computation():
    # Prepare: 2 images, 2 channels, 1x2 pixels; channel 0 = [0, 255] and [255, 255], channel 1 = 51
    images = torch.tensor([[[[0, 255]], [[51, 51]]], [[[255, 255]], [[51, 51]]]], dtype=torch.uint8)

    # Execute
    mean, std, pixel_var = pixel_statistics(images)

    # Assert: channel 0 holds 0, 1, 1, 1 -> mean 0.75, var 0.1875; channel 1 is 0.2 everywhere;
    # only pixel (0, 0, 0) varies (0 vs 1, var 0.25), so the mean over 4 pixels is 0.0625
    assert mean == pytest.approx((0.75, 0.2))
    assert std == pytest.approx((0.1875**0.5, 0.0), abs=1e-7)
    assert pixel_var == pytest.approx(0.0625)


def test_digits_load_as_uint8_single_channel_without_flip():
    # Prepare
    cfg = DataConfig(source="digits", val_fraction=0.1)

    # Execute
    splits = load_splits(cfg, seed=0)

    # Assert: 1797 images; value 16 maps to 255
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == 359
    assert splits.shape == (1, 8, 8) and splits.num_classes == 10 and not splits.natural
    assert splits.train.images.dtype == torch.uint8 and int(splits.train.images.max()) == 255


def test_image_size_resizes_a_tensor_source():
    # Prepare
    cfg = DataConfig(source="digits", image_size=16)

    # Execute
    splits = load_splits(cfg, seed=0)

    # Assert
    assert splits.shape == (1, 16, 16)
    assert splits.test.images.shape[1:] == (1, 16, 16)


def test_load_splits_is_cached_per_config_and_seed(numbered):
    # Prepare
    cfg = DataConfig()

    # Execute
    first, again, other = load_splits(cfg, 0), load_splits(cfg, 0), load_splits(cfg, 1)

    # Assert
    assert first is again and first is not other


def test_image_set_rejects_float_images():
    # Prepare
    images, labels = torch.zeros((2, 1, 2, 2)), torch.zeros(2, dtype=torch.int64)

    # Execute / Assert
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images, labels)
