"""The pretrained-weights guard catches the modules() re-initialisation bug and ignores training."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from torchgraft import PretrainedWeightsChangedError, accept_pretrained, check_pretrained, graft


def init_new_layers(module: nn.Module) -> None:
    """What users write to 'initialise the new layers' — applied to model.modules() it hits the backbone."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@pytest.fixture
def grafted():
    return graft(torchvision.models.resnet18(), 4, head="mlp", input_size=(3, 64, 64))


def test_modules_init_loop_is_caught_and_named(grafted):
    for module in grafted.modules():
        init_new_layers(module)
    with pytest.raises(PretrainedWeightsChangedError, match=r"20 of 60 pretrained tensors.*body\.model\.conv1\.weight"):
        check_pretrained(grafted)
    # every re-initialised convolution is named (random-init BatchNorm is already 1/0, so unchanged)
    convs = {f"{n}.weight" for n, m in grafted.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(grafted.guard.check(grafted).changed) == convs


def test_initialising_only_the_head_is_fine(grafted):
    grafted.head.apply(init_new_layers)
    assert check_pretrained(grafted).ok


def test_training_steps_do_not_trip_it(grafted):
    for optimizer in (
        torch.optim.AdamW(grafted.parameters(), lr=1e-3),
        torch.optim.SGD(grafted.parameters(), lr=0.1, momentum=0.9, foreach=False),
    ):
        for _ in range(3):
            loss = grafted(torch.randn(4, 3, 64, 64)).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    report = check_pretrained(grafted)
    assert report.ok and report.checked == 60


def test_reinit_after_training_is_caught(grafted):
    optimizer = torch.optim.SGD(grafted.parameters(), lr=0.1)
    grafted(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    nn.init.zeros_(grafted.body.model.layer3[0].conv1.weight)
    with pytest.raises(PretrainedWeightsChangedError, match=r"1 of 60.*layer3\.0\.conv1\.weight"):
        check_pretrained(grafted)


def test_change_before_a_step_is_remembered(grafted):
    """A re-init followed by training must still be reported: the next step would otherwise hide it."""
    nn.init.kaiming_normal_(grafted.body.model.conv1.weight)
    optimizer = torch.optim.SGD(grafted.parameters(), lr=0.1)
    grafted(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    with pytest.raises(PretrainedWeightsChangedError, match=r"body\.model\.conv1\.weight"):
        check_pretrained(grafted)


def test_writing_back_the_same_values_is_not_a_change(grafted):
    weight = grafted.body.model.conv1.weight
    with torch.no_grad():
        weight.copy_(weight.clone())
    assert check_pretrained(grafted).ok


def test_accept_after_deliberate_load(grafted):
    state = {k: torch.zeros_like(v) for k, v in grafted.body.model.layer1.state_dict().items()}
    grafted.body.model.layer1.load_state_dict(state)
    with pytest.raises(PretrainedWeightsChangedError, match="accept_pretrained"):
        check_pretrained(grafted)
    accept_pretrained(grafted)
    assert check_pretrained(grafted).ok


def test_replaced_layer_is_reported_not_raised(grafted):
    grafted.body.model.layer4[1].conv2 = nn.Conv2d(512, 512, 3, padding=1, bias=False)
    report = check_pretrained(grafted)
    assert report.replaced == ("body.model.layer4.1.conv2.weight",)


def test_plain_model_has_no_guard():
    with pytest.raises(TypeError, match="has no pretrained-weights guard"):
        check_pretrained(nn.Linear(2, 2))


def test_real_pretrained_backbone_every_tensor_named(lite0):
    """On real ImageNet weights the init loop changes every conv and BatchNorm tensor of the body."""
    grafted = graft(lite0, 10)
    for module in grafted.modules():
        init_new_layers(module)
    changed = set(grafted.guard.check(grafted).changed)
    assert changed == set(grafted.info.pretrained)
    assert len(changed) > 100
