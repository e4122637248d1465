"""Data: reading images, folder and CSV datasets, preprocessing from the weights' metadata.

The names below are the package's public surface for data (``torchgraft`` re-exports them); the modules
hold the readers' parts (:mod:`~torchgraft.data.tables`, :mod:`~torchgraft.data.samples`,
:mod:`~torchgraft.data.sampling`).
"""

from torchgraft.data.decode import decode_rgb
from torchgraft.data.folders import ImageData, ImageDataset, image_data
from torchgraft.data.images import BadImage, load_rgb, scan_images
from torchgraft.data.masks import MaskData, MaskDataset, mask_transforms, segmentation_data
from torchgraft.data.preprocess import Preprocessing, preprocessing_for
from torchgraft.data.samples import DataError
from torchgraft.data.texts import TextData, text_data
from torchgraft.data.tokens import LengthGroupedBatches, PadCollate, TextPreprocessing, TokenDataset

__all__ = [
    "BadImage",
    "DataError",
    "ImageData",
    "ImageDataset",
    "LengthGroupedBatches",
    "MaskData",
    "MaskDataset",
    "PadCollate",
    "Preprocessing",
    "TextData",
    "TextPreprocessing",
    "TokenDataset",
    "decode_rgb",
    "image_data",
    "load_rgb",
    "mask_transforms",
    "preprocessing_for",
    "scan_images",
    "segmentation_data",
    "text_data",
]
