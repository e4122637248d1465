"""torchgraft: fine-tune pretrained PyTorch networks correctly by construction.

Graft a new head onto any pretrained network without touching its weights::

    import torchgraft, torchvision
    model = torchgraft.graft(torchvision.models.resnet50(weights="DEFAULT"), 10)
    print(torchgraft.describe(model))
"""

from torchgraft.channels import InputAdaptation, adapt_conv_weight, adapt_input_channels
from torchgraft.classifier import ClassifierInfo, ClassifierNotFoundError, find_classifier
from torchgraft.describe import describe
from torchgraft.dryrun import Trace, trace
from torchgraft.guard import (
    GuardReport,
    PretrainedGuard,
    PretrainedWeightsChangedError,
    accept_pretrained,
    check_pretrained,
)
from torchgraft.heads import Pool, SigmoidRange, linear_head, mlp_head
from torchgraft.surgery import Grafted, GraftInfo, graft

__version__ = "0.1.0"

__all__ = [
    "ClassifierInfo",
    "ClassifierNotFoundError",
    "GraftInfo",
    "Grafted",
    "GuardReport",
    "InputAdaptation",
    "Pool",
    "PretrainedGuard",
    "PretrainedWeightsChangedError",
    "SigmoidRange",
    "Trace",
    "__version__",
    "accept_pretrained",
    "adapt_conv_weight",
    "adapt_input_channels",
    "check_pretrained",
    "describe",
    "find_classifier",
    "graft",
    "linear_head",
    "mlp_head",
    "trace",
]
