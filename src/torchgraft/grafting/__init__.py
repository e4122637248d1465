"""Grafting: dry runs on the meta device, finding the classifier, cutting the body, new heads, input channels,
dense (segmentation) grafts, detectors (on any backbone, or re-headed), the graft's record and its replay, the
pretrained-weights guard. Knows nothing of training."""

from __future__ import annotations

from torchgraft.grafting.body import Body, PrunedModule
from torchgraft.grafting.channels import InputAdaptation, adapt_conv_weight, adapt_input_channels
from torchgraft.grafting.classifier import ClassifierInfo, ClassifierNotFoundError, find_classifier
from torchgraft.grafting.decoders import DECODERS, UNET_WIDTHS, FPNDecoder, UNetDecoder
from torchgraft.grafting.dense import Segmenter, graft_dense
from torchgraft.grafting.detector import (
    DETECTOR_BATCH_NORM,
    DETECTOR_HEADS,
    TapPyramid,
    freeze_batch_norm,
    graft_detector,
)
from torchgraft.grafting.dryrun import Trace, trace
from torchgraft.grafting.grafted import Grafted
from torchgraft.grafting.guard import (
    GuardReport,
    PretrainedGuard,
    PretrainedWeightsChangedError,
    accept_pretrained,
    check_pretrained,
)
from torchgraft.grafting.heads import Pool, SigmoidRange, linear_head, mlp_head
from torchgraft.grafting.info import GraftInfo, GraftRecordError
from torchgraft.grafting.redetect import class_layers, is_detector, label_offset, regraft_detection
from torchgraft.grafting.replay import replay_graft
from torchgraft.grafting.resegment import Resegmented, regraft_segmentation
from torchgraft.grafting.surgery import graft
from torchgraft.grafting.taps import Tap, find_taps

__all__ = [
    "DECODERS",
    "DETECTOR_BATCH_NORM",
    "DETECTOR_HEADS",
    "UNET_WIDTHS",
    "Body",
    "ClassifierInfo",
    "ClassifierNotFoundError",
    "FPNDecoder",
    "GraftInfo",
    "GraftRecordError",
    "Grafted",
    "GuardReport",
    "InputAdaptation",
    "Pool",
    "PretrainedGuard",
    "PretrainedWeightsChangedError",
    "PrunedModule",
    "Resegmented",
    "Segmenter",
    "SigmoidRange",
    "Tap",
    "TapPyramid",
    "Trace",
    "UNetDecoder",
    "accept_pretrained",
    "adapt_conv_weight",
    "adapt_input_channels",
    "check_pretrained",
    "class_layers",
    "find_classifier",
    "find_taps",
    "freeze_batch_norm",
    "graft",
    "graft_dense",
    "graft_detector",
    "is_detector",
    "label_offset",
    "linear_head",
    "mlp_head",
    "regraft_detection",
    "regraft_segmentation",
    "replay_graft",
    "trace",
]
