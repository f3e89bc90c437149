"""The data layer: sources, splits, client partitions and on-device batch loading.

Images stay uint8 until a batch is cut; batches are float32 in [0, 1]. Normalisation belongs to
the model's first layer, so attacks and metrics work in pixel space.
"""

from fl_cem.data.imageset import ImageSet, SourceData, stratified_split
from fl_cem.data.loader import BatchLoader
from fl_cem.data.partition import partition_indices
from fl_cem.data.sources import data_home, load_source, resize_images
from fl_cem.data.splits import DataSplits, load_splits, pixel_statistics

__all__ = [
    "BatchLoader",
    "DataSplits",
    "ImageSet",
    "SourceData",
    "data_home",
    "load_source",
    "load_splits",
    "partition_indices",
    "pixel_statistics",
    "resize_images",
    "stratified_split",
]
