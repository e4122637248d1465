"""torchgraft: fine-tune pretrained PyTorch networks correctly by construction.

Graft a new head onto any pretrained network without touching its weights::

    import torchgraft, torchvision
    model = torchgraft.graft(torchvision.models.resnet50(weights="DEFAULT"), 10)
    print(torchgraft.describe(model))
"""

from typing import TYPE_CHECKING

from torchgraft._lazy import lazy_exports
from torchgraft._version import __version__

if TYPE_CHECKING:  # the names below, for type checkers and editors; at run time each is imported when first read
    from torchgraft.app.run import RunResult, train_run
    from torchgraft.app.settings import TrainSettings
    from torchgraft.data.decode import decode_rgb
    from torchgraft.data.folders import DataError, ImageData, ImageDataset, image_data
    from torchgraft.data.images import BadImage, load_rgb, scan_images
    from torchgraft.data.masks import MaskData, MaskDataset, mask_transforms, segmentation_data
    from torchgraft.data.preprocess import Preprocessing, preprocessing_for
    from torchgraft.data.texts import TextData, text_data
    from torchgraft.data.tokens import LengthGroupedBatches, PadCollate, TextPreprocessing, TokenDataset
    from torchgraft.grafting.channels import InputAdaptation, adapt_conv_weight, adapt_input_channels
    from torchgraft.grafting.classifier import ClassifierInfo, ClassifierNotFoundError, find_classifier
    from torchgraft.grafting.dense import Segmenter, graft_dense
    from torchgraft.grafting.detector import graft_detector
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
    from torchgraft.grafting.info import GraftInfo
    from torchgraft.grafting.redetect import label_offset, regraft_detection
    from torchgraft.grafting.replay import replay_graft
    from torchgraft.grafting.resegment import Resegmented
    from torchgraft.grafting.surgery import graft
    from torchgraft.grafting.taps import Tap, find_taps
    from torchgraft.ship.deploy import DeployReport, deploy
    from torchgraft.ship.export import Exported, ExportError, export_model, load_exported
    from torchgraft.ship.predict import MaskPrediction, Prediction, predict_images, predict_masks, predict_texts
    from torchgraft.ship.program import DeployError, export_program
    from torchgraft.tasks import (
        Classification,
        Detect,
        Multilabel,
        Regression,
        Segmentation,
        Task,
        TaskReport,
        best_threshold,
        get_task,
        register_task,
    )
    from torchgraft.tasks.metrics import MetricSet, TargetError, accuracy, error_rate, top_k_accuracy
    from torchgraft.train import distributed as distributed
    from torchgraft.train.callbacks import Callback, Checkpointer, EarlyStopping
    from torchgraft.train.learner import Learner, TrainingDivergedError
    from torchgraft.train.lr_finder import LRFind, lr_find
    from torchgraft.train.schedule import one_cycle
    from torchgraft.train.track_mlflow import MLflowLogger
    from torchgraft.train.track_tensorboard import TensorBoardLogger
    from torchgraft.tune.describe import describe
    from torchgraft.tune.freeze import freeze, freeze_to, gradual_unfreeze, refreeze, unfreeze
    from torchgraft.tune.group_types import GroupSpec, LayerGroup, LayerGroups
    from torchgraft.tune.groups import layer_groups
    from torchgraft.tune.lora import LoraError, is_adapted, lora, merged, save_adapters
    from torchgraft.tune.optim import group_lrs, param_groups
    from torchgraft.tune.stale import OptimizerReport, StaleOptimizerError, check_optimizer, watch_optimizer
    from torchgraft.tune.sync import SyncReport, sync_optimizer
    from torchgraft.weights.align import Alignment, Match, align_keys
    from torchgraft.weights.checkpoint import (
        Checkpoint,
        CheckpointReadError,
        UnsafeCheckpointError,
        read_checkpoint,
        save_weights,
    )
    from torchgraft.weights.load import LoadError, LoadReport, load_weights
    from torchgraft.weights.pretrained import WeightsError, pretrained_model

_EXPORTS: dict[str, tuple[str, ...]] = {
    "torchgraft.app.run": ("RunResult", "train_run"),
    "torchgraft.app.settings": ("TrainSettings",),
    "torchgraft.data.decode": ("decode_rgb",),
    "torchgraft.data.folders": ("DataError", "ImageData", "ImageDataset", "image_data"),
    "torchgraft.data.images": ("BadImage", "load_rgb", "scan_images"),
    "torchgraft.data.masks": ("MaskData", "MaskDataset", "mask_transforms", "segmentation_data"),
    "torchgraft.data.preprocess": ("Preprocessing", "preprocessing_for"),
    "torchgraft.data.texts": ("TextData", "text_data"),
    "torchgraft.data.tokens": ("LengthGroupedBatches", "PadCollate", "TextPreprocessing", "TokenDataset"),
    "torchgraft.grafting.channels": ("InputAdaptation", "adapt_conv_weight", "adapt_input_channels"),
    "torchgraft.grafting.classifier": ("ClassifierInfo", "ClassifierNotFoundError", "find_classifier"),
    "torchgraft.grafting.dense": ("Segmenter", "graft_dense"),
    "torchgraft.grafting.detector": ("graft_detector",),
    "torchgraft.grafting.dryrun": ("Trace", "trace"),
    "torchgraft.grafting.grafted": ("Grafted",),
    "torchgraft.grafting.guard": (
        "GuardReport",
        "PretrainedGuard",
        "PretrainedWeightsChangedError",
        "accept_pretrained",
        "check_pretrained",
    ),
    "torchgraft.grafting.heads": ("Pool", "SigmoidRange", "linear_head", "mlp_head"),
    "torchgraft.grafting.info": ("GraftInfo",),
    "torchgraft.grafting.redetect": ("label_offset", "regraft_detection"),
    "torchgraft.grafting.replay": ("replay_graft",),
    "torchgraft.grafting.resegment": ("Resegmented",),
    "torchgraft.grafting.surgery": ("graft",),
    "torchgraft.grafting.taps": ("Tap", "find_taps"),
    "torchgraft.ship.deploy": ("DeployReport", "deploy"),
    "torchgraft.ship.export": ("Exported", "ExportError", "export_model", "load_exported"),
    "torchgraft.ship.predict": ("MaskPrediction", "Prediction", "predict_images", "predict_masks", "predict_texts"),
    "torchgraft.ship.program": ("DeployError", "export_program"),
    "torchgraft.tasks": (
        "Classification",
        "Detect",
        "Multilabel",
        "Regression",
        "Segmentation",
        "Task",
        "TaskReport",
        "best_threshold",
        "get_task",
        "register_task",
    ),
    "torchgraft.tasks.metrics": ("MetricSet", "TargetError", "accuracy", "error_rate", "top_k_accuracy"),
    "torchgraft.train.callbacks": ("Callback", "Checkpointer", "EarlyStopping"),
    "torchgraft.train.learner": ("Learner", "TrainingDivergedError"),
    "torchgraft.train.lr_finder": ("LRFind", "lr_find"),
    "torchgraft.train.schedule": ("one_cycle",),
    "torchgraft.train.track_mlflow": ("MLflowLogger",),
    "torchgraft.train.track_tensorboard": ("TensorBoardLogger",),
    "torchgraft.tune.describe": ("describe",),
    "torchgraft.tune.freeze": ("freeze", "freeze_to", "gradual_unfreeze", "refreeze", "unfreeze"),
    "torchgraft.tune.group_types": ("GroupSpec", "LayerGroup", "LayerGroups"),
    "torchgraft.tune.groups": ("layer_groups",),
    "torchgraft.tune.lora": ("LoraError", "is_adapted", "lora", "merged", "save_adapters"),
    "torchgraft.tune.optim": ("group_lrs", "param_groups"),
    "torchgraft.tune.stale": ("OptimizerReport", "StaleOptimizerError", "check_optimizer", "watch_optimizer"),
    "torchgraft.tune.sync": ("SyncReport", "sync_optimizer"),
    "torchgraft.weights.align": ("Alignment", "Match", "align_keys"),
    "torchgraft.weights.checkpoint": (
        "Checkpoint",
        "CheckpointReadError",
        "UnsafeCheckpointError",
        "read_checkpoint",
        "save_weights",
    ),
    "torchgraft.weights.load": ("LoadError", "LoadReport", "load_weights"),
    "torchgraft.weights.pretrained": ("WeightsError", "pretrained_model"),
}
_MODULES = {"distributed": "torchgraft.train.distributed"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), modules=_MODULES)

__all__ = [
    "Alignment",
    "BadImage",
    "Callback",
    "Checkpoint",
    "CheckpointReadError",
    "Checkpointer",
    "Classification",
    "ClassifierInfo",
    "ClassifierNotFoundError",
    "DataError",
    "DeployError",
    "DeployReport",
    "Detect",
    "EarlyStopping",
    "ExportError",
    "Exported",
    "GraftInfo",
    "Grafted",
    "GroupSpec",
    "GuardReport",
    "ImageData",
    "ImageDataset",
    "InputAdaptation",
    "LRFind",
    "LayerGroup",
    "LayerGroups",
    "Learner",
    "LengthGroupedBatches",
    "LoadError",
    "LoadReport",
    "LoraError",
    "MLflowLogger",
    "MaskData",
    "MaskDataset",
    "MaskPrediction",
    "Match",
    "MetricSet",
    "Multilabel",
    "OptimizerReport",
    "PadCollate",
    "Pool",
    "Prediction",
    "Preprocessing",
    "PretrainedGuard",
    "PretrainedWeightsChangedError",
    "Regression",
    "Resegmented",
    "RunResult",
    "Segmentation",
    "Segmenter",
    "SigmoidRange",
    "StaleOptimizerError",
    "SyncReport",
    "Tap",
    "TargetError",
    "Task",
    "TaskReport",
    "TensorBoardLogger",
    "TextData",
    "TextPreprocessing",
    "TokenDataset",
    "Trace",
    "TrainSettings",
    "TrainingDivergedError",
    "UnsafeCheckpointError",
    "WeightsError",
    "__version__",
    "accept_pretrained",
    "accuracy",
    "adapt_conv_weight",
    "adapt_input_channels",
    "align_keys",
    "best_threshold",
    "check_optimizer",
    "check_pretrained",
    "decode_rgb",
    "deploy",
    "describe",
    "distributed",
    "error_rate",
    "export_model",
    "export_program",
    "find_classifier",
    "find_taps",
    "freeze",
    "freeze_to",
    "get_task",
    "gradual_unfreeze",
    "graft",
    "graft_dense",
    "graft_detector",
    "group_lrs",
    "image_data",
    "is_adapted",
    "label_offset",
    "layer_groups",
    "linear_head",
    "load_exported",
    "load_rgb",
    "load_weights",
    "lora",
    "lr_find",
    "mask_transforms",
    "merged",
    "mlp_head",
    "one_cycle",
    "param_groups",
    "predict_images",
    "predict_masks",
    "predict_texts",
    "preprocessing_for",
    "pretrained_model",
    "read_checkpoint",
    "refreeze",
    "register_task",
    "regraft_detection",
    "replay_graft",
    "save_adapters",
    "save_weights",
    "scan_images",
    "segmentation_data",
    "sync_optimizer",
    "text_data",
    "top_k_accuracy",
    "trace",
    "train_run",
    "unfreeze",
    "watch_optimizer",
]
