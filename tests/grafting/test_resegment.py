"""Networks that already segment keep their decoder and get new classifiers: every torchvision segmentation
builder (meta device), auxiliary heads dropped or replaced, Hugging Face Segformer, groups (backbone, decoder,
head) and freezing, the pretrained tensors untouched, training, and the export round trip."""

from __future__ import annotations

import pytest
import torch
import torchvision

from torchgraft import freeze, graft_dense, layer_groups
from torchgraft.data.preprocess import Preprocessing
from torchgraft.grafting.resegment import Resegmented
from torchgraft.ship.export import export_model, load_exported
from torchgraft.tasks import Segmentation
from torchgraft.weights.zoo import build_model

SEGMENTERS = torchvision.models.list_models(module=torchvision.models.segmentation)


@pytest.mark.parametrize("name", SEGMENTERS)
@pytest.mark.parametrize("aux", ["drop", "replace"])
def test_every_torchvision_segmenter_keeps_its_decoder_with_new_classifiers(name, aux):
    model = build_model(name)  # meta device, with the auxiliary head its pretrained weights have
    had_aux = getattr(model, "aux_classifier", None) is not None
    decoder_before = {n: p.shape for n, p in model.classifier.named_parameters()}
    grafted = graft_dense(model, 5, input_size=(3, 120, 136), aux=aux)
    assert isinstance(grafted, Resegmented) and grafted.info.method == "resegment"
    assert grafted(torch.empty(2, 3, 120, 136, device="meta")).shape == (2, 5, 120, 136)
    expected = 2 if name.startswith("lraspp") else 1  # LR-ASPP sums a low- and a high-level classifier
    assert len(grafted.head) == expected + (1 if had_aux and aux == "replace" else 0)
    assert all(conv.out_channels == 5 for conv in grafted.head)
    if had_aux:
        assert (grafted.network.aux_classifier is None) == (aux == "drop")
    if had_aux and aux == "replace":
        assert grafted.network(torch.empty(2, 3, 120, 136, device="meta"))["aux"].shape[1] == 5
    # everything but the classifier convolutions is still the pretrained decoder, under the same names
    kept = {n: p.shape for n, p in grafted.decoder.classifier.named_parameters()}
    assert {n: s for n, s in decoder_before.items() if n in kept} == kept
    assert len(kept) >= len(decoder_before) - 2 * expected  # each replaced convolution: a weight and a bias


def test_groups_freeze_and_the_pretrained_tensors():
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "classifier" not in n or "scale" in n}
    grafted = graft_dense(model, 3, input_size=(3, 96, 96))
    groups = layer_groups(grafted)
    assert [g.name for g in groups.groups][-2:] == ["decoder", "head"] and groups.n_new == 2
    after = dict(grafted.network.named_parameters())
    for name, tensor in before.items():  # the graft moved nothing: the network's own tensors are the same
        assert torch.equal(after[name], tensor), name
    freeze(grafted)
    trainable = {n for n, p in grafted.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("decoder.", "head.")) for n in trainable)
    assert {n for n, _ in grafted.named_parameters() if n.startswith("head.")} <= trainable
    # a step moves the decoder and the head, never the frozen backbone
    backbone = {n: p.detach().clone() for n, p in grafted.body.named_parameters()}
    optimizer = torch.optim.SGD([p for p in grafted.parameters() if p.requires_grad], lr=0.1)
    grafted.train()
    x, target = torch.randn(2, 3, 96, 96), torch.randint(0, 3, (2, 96, 96))
    loss = Segmentation().loss(grafted(x), target)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(p, backbone[n]) for n, p in grafted.body.named_parameters())
    assert grafted.guard is not None


def test_segformer_from_hugging_face_gets_a_new_classifier():
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        num_labels=150, hidden_sizes=[16, 32, 64, 128], decoder_hidden_size=64, depths=[1, 1, 1, 1]
    )
    model = transformers.SegformerForSemanticSegmentation(config)
    grafted = graft_dense(model, 4, input_size=(3, 64, 64))
    assert grafted.info.classifier == ("decode_head.classifier",)
    assert grafted(torch.randn(2, 3, 64, 80)).shape == (2, 4, 64, 80)  # logits at 1/4, resized to the input
    assert [g.name for g in layer_groups(grafted).groups][-2:] == ["decoder", "head"]


def test_export_round_trip_is_bit_equal(tmp_path):
    model = build_model("lraspp_mobilenet_v3_large", device="cpu")
    grafted = graft_dense(model, 3, input_size=(3, 64, 64)).eval()
    prep = Preprocessing(64, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    export_model(tmp_path, grafted, architecture="lraspp_mobilenet_v3_large", classes=["a", "b", "c"],
                 preprocessing=prep, task=Segmentation())  # fmt: skip
    loaded = load_exported(tmp_path)
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), grafted(x))
    assert isinstance(loaded.task, Segmentation)


class _OwnNet(torch.nn.Module):
    """A user's own segmentation network: a stem, a trunk and a decoder ending in a 1x1 classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, 2, 1)
        )
        self.up = torch.nn.Sequential(torch.nn.Conv2d(16, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 7, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(self.up(self.trunk(x)), size=x.shape[-2:], mode="bilinear")


def test_your_own_segmentation_network_names_its_backbone():
    with pytest.raises(ValueError, match="backbone='<part>'"):
        graft_dense(_OwnNet(), 2, input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="not a part of _OwnNet"):
        graft_dense(_OwnNet(), 2, input_size=(3, 32, 32), backbone="stem")
    grafted = graft_dense(_OwnNet(), 2, input_size=(3, 32, 32), backbone="trunk")
    assert grafted.info.classifier == ("up.2",) and grafted(torch.randn(1, 3, 40, 36)).shape == (1, 2, 40, 36)
    assert [g.name for g in layer_groups(grafted).groups][-2:] == ["decoder", "head"]
