"""Contract over a sample of timm architectures across families, using timm's own classifier contract."""

from __future__ import annotations

import pytest
import torch

from torchgraft import graft

timm = pytest.importorskip("timm")

ARCHS = [
    "resnet18",
    "resnet26d",
    "seresnext26d_32x4d",
    "res2net50_14w_8s",
    "efficientnet_b0",
    "efficientnetv2_rw_t",
    "efficientnet_lite0",
    "mobilenetv2_100",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "mnasnet_small",
    "fbnetc_100",
    "ghostnet_100",
    "rexnet_100",
    "lcnet_050",
    "tinynet_e",
    "convnext_atto",
    "convnextv2_atto",
    "vit_tiny_patch16_224",
    "vit_small_patch32_224",
    "deit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "cait_xxs24_224",
    "swin_tiny_patch4_window7_224",
    "regnetx_002",
    "regnety_002",
    "densenet121",
    "inception_v3",
    "xception41",
    "levit_128s",
    "coatnet_nano_rw_224",
    "maxvit_nano_rw_256",
    "mixer_s32_224",
    "resmlp_12_224",
    "poolformer_s12",
    "dla34",
    "cspresnet50",
    "mobilevit_xxs",
    "edgenext_xx_small",
    "pvt_v2_b0",
    "efficientformer_l1",
    "fastvit_t8",
    "repvit_m1",
    "efficientvit_b0",
    "vgg11",
    "hrnet_w18_small",
    "dpn68",
    "nf_resnet26",
    "selecsls42b",
    "hgnetv2_b0",
    "eva02_tiny_patch14_224",
]


def test_sample_is_broad():
    assert len(ARCHS) >= 40


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pool", [None, "concat"])
def test_graft_contract_timm(arch, pool):
    model = timm.create_model(arch, pretrained=False, num_classes=1000)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    size = tuple(model.pretrained_cfg["input_size"])

    grafted = graft(model, 7, pool=pool, head="mlp" if pool else "linear")

    assert grafted.info.method == ("timm" if pool is None else "timm-features")
    assert grafted.info.classifier  # found through get_classifier()
    assert all(f"{name}.weight" not in grafted.body.model.state_dict() or pool for name in grafted.info.classifier)
    for key, tensor in grafted.body.model.state_dict().items():
        assert torch.equal(tensor, source[key]), f"{key} changed by graft"
    assert grafted.head[-1].out_features == 7
    grafted.eval()
    with torch.no_grad():
        assert grafted(torch.randn(2, *size)).shape == (2, 7)


def test_headless_timm_model_gets_a_head():
    """A timm backbone built with num_classes=0 has nothing to remove; the head reads its pooled features."""
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False)
    assert model.num_classes == 0
    grafted = graft(model, 3)
    assert grafted.info.classifier == () and grafted.info.removed_params == 0
    assert grafted.info.body_output == (192,)
    assert grafted(torch.randn(2, 3, 224, 224)).shape == (2, 3)


def test_nhwc_features_pooled_over_space():
    """timm's Swin returns (B, H, W, C) features: the head must pool H and W, not channels."""
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    grafted = graft(model, 5, pool="avg")
    assert grafted.info.layout == "nhwc"
    features = grafted.body(torch.randn(1, 3, 224, 224))
    assert features.shape == (1, 7, 7, 768)
    pooled = grafted.head[0](features)
    torch.testing.assert_close(pooled, features.mean(dim=(1, 2)))


def test_token_pool_takes_class_token():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    grafted = graft(model, 5, pool="token")
    tokens = grafted.body(torch.randn(1, 3, 224, 224))
    assert grafted.info.layout == "nlc"
    torch.testing.assert_close(grafted.head[0](tokens), tokens[:, 0])
