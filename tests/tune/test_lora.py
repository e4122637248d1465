"""LoRA through peft: adapters where the layer groups say, only adapters + head ever trainable (through a full
``fine_tune`` with its frozen stage, the feature cache and resume), the base bit-identical after training, merged
and separate exports equal to the adapted model, and peft models built by the user read the same way."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import torchgraft
from conftest import minilm_folder
from torchgraft import Learner, export_model, graft, layer_groups, load_exported, preprocessing_for
from torchgraft.train.callbacks import LambdaCallback
from torchgraft.tune.lora import LoraError, is_adapted, lora, lora_targets, merged

peft = pytest.importorskip("peft")


def _resnet() -> torch.nn.Module:
    return graft(torchvision.models.resnet18(weights=None), 3, input_size=(3, 64, 64))


def _vit() -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    return graft(timm.create_model("vit_tiny_patch16_224", img_size=64), 3, input_size=(3, 64, 64))


def _images(n: int = 24) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 64, 64, generator=generator), torch.arange(n) % 3
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=8)


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _adapter_or_head(name: str) -> bool:
    return ".lora_" in name or name.startswith("base_model.model.head.")


def test_lora_adapts_only_the_chosen_groups_and_keeps_outputs():
    model = _resnet().eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    top = lora_targets(model, groups=1)
    assert top and all(n.startswith(("body.model.layer3", "body.model.layer4")) for n in top)
    adapted = lora(model, r=4, groups=1)
    assert torch.allclose(adapted(x), before, atol=1e-6)  # LoRA starts as a no-op (B = 0)
    groups = layer_groups(adapted)
    assert groups[0].n_params == 0 and groups[0].modules == "conv1–layer2"  # no adapters there, still named
    assert all(".lora_" in n for n in groups[1].names)
    assert groups[-1].names == ("base_model.model.head.1.weight", "base_model.model.head.1.bias")
    assert len(groups.locked) == 60 and "peft adapters: 60 base tensors locked" in str(groups)
    assert _trainable(adapted) == {n for g in groups for n in g.names}


def test_unfreeze_never_turns_a_lora_run_into_a_full_fine_tune():
    adapted = lora(_resnet(), r=4)
    total = sum(p.numel() for p in adapted.parameters())
    for _ in range(2):
        torchgraft.freeze(adapted)
        assert all(n.startswith("base_model.model.head.") for n in _trainable(adapted))
        torchgraft.unfreeze(adapted)
        trainable = _trainable(adapted)
        assert trainable and all(_adapter_or_head(n) for n in trainable)
    share = sum(p.numel() for p in adapted.parameters() if p.requires_grad) / total
    assert share < 0.05
    adapted.requires_grad_(True)  # the user turns everything on; freezing puts the base back
    torchgraft.unfreeze(adapted)
    assert all(_adapter_or_head(n) for n in _trainable(adapted))


@pytest.mark.parametrize("build", [_resnet, _vit], ids=["resnet18", "vit_tiny"])
def test_fine_tune_trains_adapters_and_head_only_and_resumes(build, tmp_path):
    train_dl, valid_dl = _images()
    adapted = lora(build(), r=4)
    base = {n: p.detach().clone() for n, p in adapted.named_parameters() if not p.requires_grad}
    seen: list[set[str]] = []
    learner = Learner(adapted, train_dl, valid_dl, cache_features=True, checkpoint_dir=tmp_path, quiet=True)
    learner.add_callback(LambdaCallback(on_step_begin=lambda lrn: seen.append(_trainable(lrn.model))))
    history = learner.fine_tune(2, 1e-2, freeze_epochs=1)
    assert len(history) == 3 and seen
    assert all(_adapter_or_head(n) for names in seen for n in names)
    assert any(".lora_" in n for n in seen[-1])  # the unfrozen stage trains adapters
    assert all(torch.equal(base[n], p) for n, p in adapted.named_parameters() if n in base)
    assert torchgraft.check_pretrained(adapted).checked > 0
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapters did train
    resumed = Learner(lora(build(), r=4), train_dl, valid_dl, quiet=True)
    again = resumed.fine_tune(2, 1e-2, freeze_epochs=1, resume=tmp_path / "last.pt")
    assert len(again) == 3
    for (name, p), q in zip(adapted.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_guard_catches_an_init_loop_over_the_adapted_base():
    adapted = lora(_resnet(), r=4)
    torch.nn.init.zeros_(adapted.base_model.model.body.model.layer4[0].conv1.base_layer.weight)
    with pytest.raises(torchgraft.PretrainedWeightsChangedError, match=r"body\.model\.layer4\.0\.conv1\.weight"):
        torchgraft.check_pretrained(adapted)


def _train_a_little(model: torch.nn.Module) -> None:
    torchgraft.unfreeze(model)
    optimizer = torch.optim.AdamW(torchgraft.param_groups(model, lr=slice(1e-3, 1e-2)))
    x = torch.randn(4, 3, 64, 64)
    for _ in range(3):
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torchgraft.check_optimizer(optimizer, model).stale
    model.eval()


@pytest.mark.parametrize("mode", ["merge", "separate"])
def test_export_merged_or_separate_equals_the_adapted_model(mode, tmp_path):
    adapted = lora(_resnet(), r=4)
    _train_a_little(adapted)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = adapted(x)
    prep = preprocessing_for("resnet18", size=64)
    export_model(tmp_path, adapted, architecture="resnet18", classes=["a", "b", "c"], preprocessing=prep, adapters=mode)
    assert is_adapted(adapted)  # exporting does not merge the model in use
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["adapters"]["mode"] == mode and config["adapters"]["r"] == 4
    assert (tmp_path / "adapter_model.safetensors").is_file() == (mode == "separate")
    assert not (tmp_path / "README.md").exists()
    exported = load_exported(tmp_path)
    assert is_adapted(exported.model) == (mode == "separate")
    with torch.no_grad():
        torch.testing.assert_close(exported.model(x), expected, atol=1e-5, rtol=1e-5)
    if mode == "separate":  # peft itself loads the adapters onto the exported base
        plain = _resnet()
        torchgraft.load_weights(plain, tmp_path / "model.safetensors", strict=True)
        reloaded = peft.PeftModel.from_pretrained(plain, str(tmp_path))
        with torch.no_grad():
            torch.testing.assert_close(reloaded.eval()(x), expected, atol=1e-5, rtol=1e-5)


def test_merged_copy_equals_the_adapted_model_and_leaves_it_adapted():
    adapted = lora(_vit(), r=4)
    _train_a_little(adapted)
    plain = merged(adapted)
    assert isinstance(plain, torchgraft.Grafted) and not is_adapted(plain) and is_adapted(adapted)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), adapted(x), atol=1e-5, rtol=1e-5)


def test_a_peft_model_built_by_the_user_is_read_the_same_way():
    model = _resnet()
    config = peft.LoraConfig(r=4, target_modules=["conv1", "conv2"], modules_to_save=["head"])
    adapted = peft.get_peft_model(model, config)
    groups = layer_groups(adapted, n=3)
    assert [g.name for g in groups] == ["body0", "body1", "head"]
    assert all(".lora_" in n for g in groups[:-1] for n in g.names)
    assert all(".modules_to_save." in n for n in groups[-1].names)  # the trained copy, not the original
    torchgraft.freeze(adapted)
    assert all(".modules_to_save." in n for n in _trainable(adapted))
    torchgraft.unfreeze(adapted)
    assert all(".lora_" in n or ".modules_to_save." in n for n in _trainable(adapted))
    x = torch.randn(2, 3, 64, 64)
    head = adapted.pooled_head()  # the cache trains the trained copy of the head
    assert head[-1] is adapted.base_model.model.head.modules_to_save["default"][-1]
    with torch.no_grad():
        torch.testing.assert_close(head(adapted.features(x)), adapted.eval()(x))


def test_text_encoder_gets_adapters_in_its_encoder_layers():
    pytest.importorskip("transformers")
    from torchgraft.weights.hf import hf_text_model

    encoder, tokenizer, _ = hf_text_model(f"hf/{minilm_folder()}")
    adapted = lora(graft(encoder, 5, pool="mean"), r=8)
    names = [n for n, _ in adapted.named_parameters() if "lora_A" in n]
    assert any("attention.self.query" in n for n in names) and any("intermediate.dense" in n for n in names)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable < 0.05 * sum(p.numel() for p in adapted.parameters())
    batch = tokenizer(["a short text", "and a somewhat longer one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(adapted).eval()(**batch), adapted.eval()(**batch))


def test_lora_errors_name_the_fix():
    adapted = lora(_resnet(), r=4)
    with pytest.raises(LoraError, match="already has peft adapters"):
        lora(adapted)
    with pytest.raises(LoraError, match=r"no linear or convolution layer.*widen groups"):
        lora(_resnet(), targets=["nothing.*"])
    with pytest.raises(LoraError, match=r"groups=5 must count 1\.\.2"):
        lora(_resnet(), groups=5)
    with pytest.raises(LoraError, match=r"\['body9'\] are not body groups"):
        lora(_resnet(), groups=["body9"])
