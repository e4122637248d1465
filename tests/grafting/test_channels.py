"""in_chans: the first convolution adapted to 1 or N channels, on any model, exact on real weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from torchgraft import adapt_conv_weight, adapt_input_channels, graft


def test_weight_rules():
    weight = torch.randn(8, 3, 3, 3)
    torch.testing.assert_close(adapt_conv_weight(weight, 1), weight.sum(1, keepdim=True))
    four = adapt_conv_weight(weight, 4)
    torch.testing.assert_close(four[:, :3], weight * 3 / 4)
    torch.testing.assert_close(four[:, 3], weight[:, 0] * 3 / 4)
    with pytest.raises(ValueError, match="in_chans must be >= 1"):
        adapt_conv_weight(weight, 0)


@pytest.mark.parametrize("builder", ["resnet18", "convnext_tiny", "vit_b_16"])
@pytest.mark.parametrize("in_chans", [1, 4])
def test_graft_in_chans_forward(builder, in_chans):
    model = torchvision.models.get_model(builder, weights=None)
    first = {"resnet18": "conv1", "convnext_tiny": "features.0.0", "vit_b_16": "conv_proj"}[builder]
    original = model.get_submodule(first).weight.detach().clone()
    grafted = graft(model, 5, in_chans=in_chans)
    assert grafted.info.in_chans.module == first
    adapted = grafted.body.model.get_submodule(first).weight
    torch.testing.assert_close(adapted, adapt_conv_weight(original, in_chans))
    assert f"body.model.{first}.weight" in grafted.info.pretrained
    size = 224 if builder == "vit_b_16" else 64
    assert grafted.eval()(torch.randn(2, in_chans, size, size)).shape == (2, 5)


def test_real_weights_one_channel_equals_repeated_gray(lite0, chelsea):
    """Real ImageNet EfficientNet-Lite0: the 1-channel model on x equals the original on x repeated 3 times."""
    original = copy.deepcopy(lite0)
    assert original(chelsea).argmax().item() == 285  # "Egyptian cat": the weights are really loaded
    gray = chelsea.mean(dim=1, keepdim=True)
    adaptation = adapt_input_channels(lite0, 1)
    assert adaptation.module == "conv_stem"
    with torch.no_grad():
        torch.testing.assert_close(lite0(gray), original(gray.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_real_weights_graft_body_matches_original_features(lite0, chelsea):
    original = copy.deepcopy(lite0)
    gray = chelsea.mean(dim=1, keepdim=True)
    grafted = graft(lite0, 10, in_chans=1).eval()
    with torch.no_grad():
        expected = original.forward_head(original.forward_features(gray.repeat(1, 3, 1, 1)), pre_logits=True)
        torch.testing.assert_close(grafted.body(gray), expected, rtol=1e-4, atol=1e-4)


def test_no_input_convolution_is_a_clear_error():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with pytest.raises(ValueError, match="no convolution reading the 4 input channels"):
        graft(mlp, 2, in_chans=1, input_size=(4,))
