"""Data: reading images, folder and CSV datasets, detection boxes (COCO, YOLO, VOC), WebDataset shards and
Hugging Face datasets, preprocessing from the weights' metadata.

The names below are the package's public surface for data (``torchgraft`` re-exports them); the modules
hold the readers' parts (:mod:`~torchgraft.data.tables`, :mod:`~torchgraft.data.samples`,
:mod:`~torchgraft.data.sampling`, :mod:`~torchgraft.data.manifest`).
"""

from typing import TYPE_CHECKING

from torchgraft._lazy import lazy_exports

if TYPE_CHECKING:  # at run time each name is imported when first read (torchgraft._lazy)
    from torchgraft.data.badfiles import BadFiles
    from torchgraft.data.boxes import BoxData, box_data, box_format
    from torchgraft.data.decode import decode_rgb
    from torchgraft.data.detection import BoxDataset, box_transforms, collate_boxes
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

_EXPORTS: dict[str, tuple[str, ...]] = {
    "torchgraft.data.badfiles": ("BadFiles",),
    "torchgraft.data.boxes": ("BoxData", "box_data", "box_format"),
    "torchgraft.data.decode": ("decode_rgb",),
    "torchgraft.data.detection": ("BoxDataset", "box_transforms", "collate_boxes"),
    "torchgraft.data.folders": ("ImageData", "ImageDataset", "image_data"),
    "torchgraft.data.hfdata": ("hf_data",),
    "torchgraft.data.images": ("BadImage", "check_header", "load_rgb", "scan_images"),
    "torchgraft.data.masks": ("MaskData", "MaskDataset", "mask_transforms", "segmentation_data"),
    "torchgraft.data.packing": ("pack",),
    "torchgraft.data.preprocess": ("Preprocessing", "preprocessing_for"),
    "torchgraft.data.samples": ("DataError",),
    "torchgraft.data.streams": ("SampleStream", "StreamData"),
    "torchgraft.data.texts": ("TextData", "text_data"),
    "torchgraft.data.tokens": ("LengthGroupedBatches", "PadCollate", "TextPreprocessing", "TokenDataset"),
    "torchgraft.data.wds": ("wds_data",),
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = [
    "BadFiles",
    "BadImage",
    "BoxData",
    "BoxDataset",
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
    "box_data",
    "box_format",
    "box_transforms",
    "check_header",
    "collate_boxes",
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
