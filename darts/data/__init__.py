"""Datasets as in-memory uint8 tensors, splits, batched augmentation and a resumable stream.

``imageset``: the ImageSet, sizes, subsets, splits, channel statistics and the file
format; ``folder``: image folders and CIFAR-10 into ImageSets; ``stream``: augmentation,
normalisation and the resumable BatchStream. Everything is re-exported here, so
``from darts.data import X`` names what it always named.
"""
from .folder import GRAY_MODES, IMAGE_EXTENSIONS, list_imagefolder, load_cifar10, load_imagefolder, read_image
from .imageset import (CHANNELS, CIFAR_MEAN, CIFAR_STD, DataError, ImageSet, Size, as_hw, channel_stats, check_stats,
                       load_imageset, recorded_size, resize, resize_batch, save_imageset, size_text, split_indices,
                       subset, subset_indices, to_channels)
from .stream import BatchStream, EpochBatches, augment, normalize, to_device

__all__ = ["GRAY_MODES", "IMAGE_EXTENSIONS", "list_imagefolder", "load_cifar10", "load_imagefolder", "read_image",
           "CHANNELS", "CIFAR_MEAN", "CIFAR_STD", "DataError", "ImageSet", "Size", "as_hw", "channel_stats",
           "check_stats", "load_imageset", "recorded_size", "resize", "resize_batch", "save_imageset", "size_text",
           "split_indices", "subset", "subset_indices", "to_channels", "BatchStream", "EpochBatches", "augment",
           "normalize", "to_device"]
