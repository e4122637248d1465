"""A dry run leaves nothing changed on the user's model: buffers, plain tensor attributes, caches."""

from __future__ import annotations

import warnings

import torch
import torchvision
from torch import nn

from torchgraft import freeze, graft, layer_groups, param_groups, trace


def test_detection_model_still_runs_after_dry_runs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None
        ).eval()
    layer_groups(model)
    freeze(model)
    param_groups(model, lr=1e-3)
    anchors = model.rpn.anchor_generator.cell_anchors
    assert all(a.device.type == "cpu" for a in anchors)
    with torch.no_grad():
        detections = model([torch.rand(3, 320, 320)])
    assert set(detections[0]) == {"boxes", "labels", "scores"}


class _Caching(nn.Module):
    """Sets a plain tensor attribute, fills a list and adds an attribute during forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.table = torch.zeros(2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.table = torch.ones(2, device=x.device)
        self.seen.append(x)
        self.last_shape = x.shape
        return self.linear(x)


def test_trace_restores_rebound_filled_and_added_attributes():
    model = _Caching()
    table = model.table
    trace(model, (4,))
    trace(model, (4,), train=True)
    assert model.table is table and model.seen == [] and not hasattr(model, "last_shape")
    assert model.training
    grafted = graft(model, 2, cut="linear", input_size=(4,))
    assert grafted(torch.randn(5, 4)).shape == (5, 2)
