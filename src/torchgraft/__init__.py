"""torchgraft: fine-tune pretrained PyTorch networks correctly by construction.

Graft a new head onto any pretrained network without touching its weights::

    import torchgraft, torchvision
    model = torchgraft.graft(torchvision.models.resnet50(weights="DEFAULT"), 10)
    print(torchgraft.describe(model))
"""

from torchgraft.align import Alignment, Match, align_keys
from torchgraft.channels import InputAdaptation, adapt_conv_weight, adapt_input_channels
from torchgraft.checkpoint import Checkpoint, UnsafeCheckpointError, read_checkpoint, save_weights
from torchgraft.classifier import ClassifierInfo, ClassifierNotFoundError, find_classifier
from torchgraft.data import DataError, ImageData, ImageDataset, image_data
from torchgraft.describe import describe
from torchgraft.dryrun import Trace, trace
from torchgraft.export import Exported, ExportError, export_model, load_exported
from torchgraft.freeze import freeze, freeze_to, gradual_unfreeze, refreeze, unfreeze
from torchgraft.groups import GroupSpec, LayerGroup, LayerGroups, layer_groups
from torchgraft.guard import (
    GuardReport,
    PretrainedGuard,
    PretrainedWeightsChangedError,
    accept_pretrained,
    check_pretrained,
)
from torchgraft.heads import Pool, SigmoidRange, linear_head, mlp_head
from torchgraft.images import BadImage, load_rgb, scan_images
from torchgraft.learner import Learner, TrainingDivergedError
from torchgraft.load import LoadError, LoadReport, load_weights
from torchgraft.lr_finder import LRFind
from torchgraft.metrics import accuracy, error_rate, top_k_accuracy
from torchgraft.optim import (
    OptimizerReport,
    StaleOptimizerError,
    SyncReport,
    check_optimizer,
    group_lrs,
    param_groups,
    sync_optimizer,
    watch_optimizer,
)
from torchgraft.predict import Prediction, predict_images
from torchgraft.preprocess import Preprocessing, preprocessing_for
from torchgraft.pretrained import WeightsError, pretrained_model
from torchgraft.run import RunResult, TrainSettings, train_run
from torchgraft.surgery import Grafted, GraftInfo, graft

__version__ = "0.1.0"

__all__ = [
    "Alignment",
    "BadImage",
    "Checkpoint",
    "ClassifierInfo",
    "ClassifierNotFoundError",
    "DataError",
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
    "LoadError",
    "LoadReport",
    "Match",
    "OptimizerReport",
    "Pool",
    "Prediction",
    "Preprocessing",
    "PretrainedGuard",
    "PretrainedWeightsChangedError",
    "RunResult",
    "SigmoidRange",
    "StaleOptimizerError",
    "SyncReport",
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
    "check_optimizer",
    "check_pretrained",
    "describe",
    "error_rate",
    "export_model",
    "find_classifier",
    "freeze",
    "freeze_to",
    "gradual_unfreeze",
    "graft",
    "group_lrs",
    "image_data",
    "layer_groups",
    "linear_head",
    "load_exported",
    "load_rgb",
    "load_weights",
    "mlp_head",
    "param_groups",
    "predict_images",
    "preprocessing_for",
    "pretrained_model",
    "read_checkpoint",
    "refreeze",
    "save_weights",
    "scan_images",
    "sync_optimizer",
    "top_k_accuracy",
    "trace",
    "train_run",
    "unfreeze",
    "watch_optimizer",
]
