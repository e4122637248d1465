"""Data: reading images, folder and CSV datasets, WebDataset shards and Hugging Face datasets, preprocessing
from the weights' metadata.

The names below are the package's public surface for data (``torchgraft`` re-exports them); the modules
hold the readers' parts (:mod:`~torchgraft.data.tables`, :mod:`~torchgraft.data.samples`,
:mod:`~torchgraft.data.sampling`, :mod:`~torchgraft.data.manifest`).
"""

from torchgraft.data.badfiles import BadFiles
from torchgraft.data.decode import decode_rgb
from torchgraft.data.folders import ImageData, ImageDataset, image_data
from torchgraft.data.hfdata import hf_data
from torchgraft.data.images import BadImage, check_header, load_rgb, scan_images
from torchgraft.data.masks import MaskData, MaskDataset, mask_transforms, segmentation_data
from torchgraft.data.packing import pack
from torchgraft.data.preprocess import Preprocessing, preprocessing_for
from torchgraft.data.samples import DataError
from torchgraft.data.streams import SampleStream, StreamData
from torchgraft.data.texts import TextData, text_data
from torchgraft.data.tokens import LengthGroupedBatches, PadCollate, TextPreprocessing, TokenDataset
from torchgraft.data.wds import wds_data

__all__ = [
    "BadFiles",
    "BadImage",
    "DataError",
    "ImageData",
    "ImageDataset",
    "LengthGroupedBatches",
    "MaskData",
    "MaskDataset",
    "PadCollate",
    "Preprocessing",
    "SampleStream",
    "StreamData",
    "TextData",
    "TextPreprocessing",
    "TokenDataset",
    "check_header",
    "decode_rgb",
    "hf_data",
    "image_data",
    "load_rgb",
    "mask_transforms",
    "pack",
    "preprocessing_for",
    "scan_images",
    "segmentation_data",
    "text_data",
    "wds_data",
]
