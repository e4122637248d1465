"""Grafting user networks and Hugging Face models: generic classifier search, cuts, heads and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from torchgraft import ClassifierNotFoundError, graft
from torchgraft.grafting.body import PrunedModule


class FunctionalPoolNet(nn.Module):
    """Pooling inside forward, no layer named fc/classifier, class scores from a module called `scores`."""

    def __init__(self, classes: int = 12) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU())
        self.scores = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.trunk(x), 1).flatten(1)
        return self.scores(F.dropout(x, 0.1, self.training))


class TupleBackbone(nn.Module):
    """Returns (low-level, high-level) feature maps, as a DeepLabV3+ encoder does."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.stem(x)
        return low, self.deep(low)


class DeepLabLike(nn.Module):
    """Segmentation network: tuple-returning backbone, ASPP-ish context, decoder fusing both scales."""

    def __init__(self, classes: int = 21) -> None:
        super().__init__()
        self.backbone = TupleBackbone()
        self.aspp = nn.Conv2d(32, 32, 3, padding=2, dilation=2)
        self.decoder = nn.Conv2d(48, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(self.decoder(torch.cat([low, high], 1)), size=x.shape[-2:], mode="bilinear")


class FuseDecoder(nn.Module):
    """A user head for the tuple the backbone returns."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(48, classes, 1)

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        low, high = features
        high = F.interpolate(high, size=low.shape[-2:], mode="nearest")
        return self.project(torch.cat([low, high], 1))


def test_functional_pooling_net_classifier_found():
    model = FunctionalPoolNet()
    trunk = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    grafted = graft(model, 4, input_size=(3, 32, 32))
    assert grafted.info.classifier == ("scores",)
    assert grafted.info.body_output == (32,)
    assert isinstance(grafted.body.model.scores, nn.Identity)
    for key, value in grafted.body.model.trunk.state_dict().items():
        assert torch.equal(value, trunk[key])
    assert grafted(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_functional_pooling_net_unpooled_cut():
    grafted = graft(FunctionalPoolNet(), 4, input_size=(3, 32, 32), pool="concat", head="mlp")
    assert grafted.info.cut_at == "trunk"
    assert grafted.info.body_output == (32, 7, 7)
    assert isinstance(grafted.body.model.scores, PrunedModule)
    assert grafted(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_segmentation_backbone_returning_tuple_with_user_cut():
    model = DeepLabLike()
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    grafted = graft(model, 5, cut="backbone", head=FuseDecoder(5), input_size=(3, 64, 64))
    for key, value in grafted.body.model.backbone.state_dict().items():
        assert torch.equal(value, backbone[key])
    x = torch.randn(2, 3, 64, 64)
    low, high = grafted.body(x)
    assert low.shape == (2, 16, 32, 32) and high.shape == (2, 32, 16, 16)
    assert grafted(x).shape == (2, 5, 32, 32)
    assert grafted.info.body_output is None  # structured output
    assert set(grafted.info.removed) == {"aspp", "decoder"}
    assert isinstance(grafted.body.model.aspp, PrunedModule)


def test_string_head_on_tuple_body_names_the_fix():
    with pytest.raises(ValueError, match=r"not one tensor.*head=<a module"):
        graft(DeepLabLike(), 5, cut="backbone", input_size=(3, 64, 64))


def test_model_without_classifier_is_a_clear_error():
    encoder = TupleBackbone()
    with pytest.raises(ClassifierNotFoundError, match=r"no classifier found in TupleBackbone.*Pass cut=.*stem"):
        graft(encoder, 3, input_size=(3, 32, 32))


def test_segmentation_network_without_cut_is_a_clear_error():
    with pytest.raises(ClassifierNotFoundError, match=r"not a \(batch, classes\) tensor.*candidates: backbone"):
        graft(DeepLabLike(), 3, input_size=(3, 32, 32))


def test_last_layer_not_projecting_to_classes():
    model = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4))
    with pytest.raises(ClassifierNotFoundError, match=r"last layer with parameters is '1' \(LayerNorm\)"):
        graft(model, 2, input_size=(8,))


def test_int_cut_keeps_children_like_fastai():
    resnet = torchvision.models.resnet18()
    grafted = graft(resnet, 3, cut=-2, input_size=(3, 64, 64))
    assert grafted.info.cut_at == "layer4"
    assert grafted.info.body_output == (512, 2, 2)
    assert grafted.info.pool == "avg"
    assert grafted(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_dotted_cut_in_the_middle():
    grafted = graft(torchvision.models.mobilenet_v2(), 3, cut="features.13", head="mlp", input_size=(3, 64, 64))
    assert grafted.info.body_output == (96, 4, 4)
    assert isinstance(grafted.body.model.features[14], PrunedModule)
    assert grafted.head[0].mode == "concat"
    assert grafted(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_callable_cut():
    resnet = torchvision.models.resnet18()
    grafted = graft(resnet, 3, cut=lambda m: nn.Sequential(*list(m.children())[:-2]), input_size=(3, 64, 64))
    assert grafted.info.method == "callable"
    assert grafted(torch.randn(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        ("layer9", r"cut='layer9' is not a module of ResNet. Close names: 'layer4', 'layer3'"),
        (12, r"cut=12 is out of range for ResNet, which has 10 children"),
        ("layer1.0.relu", r"runs 2 times"),
    ],
)
def test_bad_cuts(cut, message):
    with pytest.raises(ValueError, match=message):
        graft(torchvision.models.resnet18(), 3, cut=cut, input_size=(3, 64, 64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head": "transformer"}, r"unknown head='transformer'"),
        ({"pool": "median"}, r"unknown pool='median'"),
        ({"n_out": 0}, r"n_out must be a positive int"),
    ],
)
def test_bad_options(kwargs, message):
    options = {"n_out": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        graft(torchvision.models.resnet18(), options.pop("n_out"), input_size=(3, 64, 64), **options)


def test_user_head_callable_gets_body_shape():
    seen = []

    def make_head(shape):
        seen.append(tuple(shape))
        return nn.Linear(shape[1], 6)

    grafted = graft(torchvision.models.resnet18(), 6, head=make_head, input_size=(3, 64, 64))
    assert seen == [(2, 512)]
    assert grafted(torch.randn(2, 3, 64, 64)).shape == (2, 6)


def test_mlp_head_options_and_y_range():
    grafted = graft(
        torchvision.models.resnet18(),
        1,
        head="mlp",
        pool="concat",
        hidden=(64, 32),
        dropout=0.2,
        y_range=(-1.0, 3.0),
        input_size=(3, 64, 64),
    )
    linears = [m for m in grafted.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 64), (64, 32), (32, 1)]
    out = grafted.eval()(torch.randn(4, 3, 64, 64))
    assert out.min() > -1 and out.max() < 3


def test_aux_heads_removed_and_train_output_is_a_tensor():
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    grafted = graft(model, 3)
    assert {"aux1", "aux2"} <= set(grafted.info.removed)
    assert model.aux1 is None and model.aux2 is None
    out = grafted.train()(torch.randn(2, 3, 224, 224))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


hf = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    ("model_cls", "config"),
    [
        (
            "ViTForImageClassification",
            dict(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
                image_size=64,
                patch_size=16,
            ),
        ),
        ("ResNetForImageClassification", dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])),
        ("ConvNextForImageClassification", dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])),
        (
            "SwinForImageClassification",
            dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], image_size=64, window_size=4),
        ),
    ],
)
@pytest.mark.parametrize("pool", [None, "concat"])
def test_hugging_face_vision_models(model_cls, config, pool):
    cls = getattr(hf, model_cls)
    config_cls = getattr(hf, model_cls.replace("ForImageClassification", "Config"))
    model = cls(config_cls(num_labels=5, **config)).eval()
    source = {k: v.clone() for k, v in model.state_dict().items()}
    grafted = graft(model, 3, pool=pool)
    assert grafted.info.classifier and grafted.info.classifier[0].startswith("classifier")
    for key, value in grafted.body.model.state_dict().items():
        assert torch.equal(value, source[key]), key
    size = grafted.info.input_size
    assert grafted(torch.randn(2, *size)).shape == (2, 3)
