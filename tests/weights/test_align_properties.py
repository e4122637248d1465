"""Property tests: renaming and prefixing a state dict never sends a tensor to the wrong key or shape.

A random network is a list of modules (dotted paths from a lower-case vocabulary) holding tensors with
standard names (weight, bias, running_mean, ...) and random shapes. The checkpoint renames every chosen
path component to a fresh upper-case name (so names never lie about which module a tensor is from),
optionally adds a wrapper prefix, and optionally drops keys. Whatever ``align_keys`` pairs must be the
original key; with nothing dropped and every key renamed, the structure stage must pair everything.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchgraft import align_keys, load_weights

PARTS = ["conv", "norm", "fc", "proj", "attn", "mlp", "stem", "head", "0", "1", "2", "3", "layer1", "layer2", "blocks"]
LEAVES = {
    "conv": [("weight", 4)],
    "norm": [("weight", 1), ("bias", 1), ("running_mean", 1), ("running_var", 1)],
    "linear": [("weight", 2), ("bias", 1)],
}


@st.composite
def networks(draw: st.DrawFn) -> dict[str, tuple[int, ...]]:
    """An ordered state dict description: key -> shape."""
    paths = draw(st.lists(st.lists(st.sampled_from(PARTS), min_size=1, max_size=3), min_size=1, max_size=12))
    state: dict[str, tuple[int, ...]] = {}
    for i, path in enumerate(paths):
        module = ".".join([*path, f"m{i}"])  # unique module path
        kind = draw(st.sampled_from(sorted(LEAVES)))
        width = draw(st.integers(1, 4))
        for leaf, ndim in LEAVES[kind]:
            state[f"{module}.{leaf}"] = (width,) * ndim
    return state


@st.composite
def renamings(draw: st.DrawFn, state: dict[str, tuple[int, ...]]) -> tuple[dict[str, str], str]:
    """original key -> checkpoint key (consistent per path component), and the prefix used."""
    components = sorted({c for key in state for c in key.split(".")[:-1]})
    renamed = draw(st.sets(st.sampled_from(components), min_size=0, max_size=len(components)))
    fresh = {c: f"X{i}{c.upper()}" for i, c in enumerate(components) if c in renamed}
    prefix = draw(st.sampled_from(["", "module.", "model.", "_orig_mod.", "BACKBONE.", "module.model."]))
    mapping = {}
    for key in state:
        *path, leaf = key.split(".")
        mapping[key] = prefix + ".".join([*(fresh.get(c, c) for c in path), leaf])
    return mapping, prefix


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_renamed_and_prefixed_keys_never_land_in_the_wrong_place(data):
    target = data.draw(networks())
    mapping, _ = data.draw(renamings(target))
    dropped = data.draw(st.sets(st.sampled_from(sorted(target)), max_size=len(target) // 3))
    source = {mapping[k]: shape for k, shape in target.items() if k not in dropped}
    origin = {v: k for k, v in mapping.items()}
    alignment = align_keys(source, target)
    for match in alignment.matches:
        assert origin[match.source] == match.target, match
        assert source[match.source] == target[match.target]
    assert not set(alignment.ambiguous) & {m.source for m in alignment.matches}
    if not dropped:
        assert len(alignment.matches) == len(target), (alignment.missing, alignment.ambiguous)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_loaded_values_come_from_the_right_tensor(data):
    """The same property end to end: every loaded tensor holds the values saved under its own original key."""
    target = data.draw(networks())
    mapping, _ = data.draw(renamings(target))
    values = {k: torch.randn(shape) for k, shape in target.items()}
    module = torch.nn.Module()
    for key, value in values.items():
        owner = module
        *path, leaf = key.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_buffer(leaf, torch.zeros_like(value))
    order = list(module.state_dict())  # a parent registered early gathers its later children
    checkpoint = {mapping[k]: values[k] for k in order}
    report = load_weights(module, checkpoint)
    for match in report.loaded:
        assert torch.equal(module.state_dict()[match.target], values[match.target])
    assert report.ok
