"""Heads: pooling in every layout, linear and MLP heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchgraft import Pool, SigmoidRange, linear_head, mlp_head
from torchgraft.grafting.heads import infer_layout


def test_pool_modes_nchw():
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(Pool(mode="avg", layout="nchw")(x), x.mean((2, 3)))
    torch.testing.assert_close(Pool(mode="max", layout="nchw")(x), x.amax((2, 3)))
    torch.testing.assert_close(Pool(mode="concat", layout="nchw")(x), torch.cat([x.amax((2, 3)), x.mean((2, 3))], 1))


def test_pool_nhwc_equals_nchw_of_permuted():
    x = torch.randn(2, 5, 5, 4)
    torch.testing.assert_close(
        Pool(mode="concat", layout="nhwc")(x), Pool(mode="concat", layout="nchw")(x.permute(0, 3, 1, 2))
    )


def test_pool_tokens():
    x = torch.randn(2, 9, 6)
    torch.testing.assert_close(Pool(mode="token", layout="nlc")(x), x[:, 0])
    torch.testing.assert_close(Pool(mode="avg", layout="nlc")(x), x.mean(1))


def test_bad_pool_arguments():
    with pytest.raises(ValueError, match="unknown mode 'median'"):
        Pool(mode="median")
    with pytest.raises(ValueError, match="unknown layout 'ncl'"):
        Pool(layout="ncl")
    with pytest.raises(ValueError, match="high > low"):
        SigmoidRange(1.0, 0.0)


def test_infer_layout():
    assert infer_layout((2, 7)) == "nc"
    assert infer_layout((2, 197, 768)) == "nlc"
    assert infer_layout((2, 768, 7, 7)) == "nchw"
    assert infer_layout((2, 7, 7, 768), channels=768) == "nhwc"
    assert infer_layout((2, 7, 7, 768), fmt="NCHW") == "nchw"
    with pytest.raises(ValueError, match="cannot pool features of shape"):
        infer_layout((2, 3, 4, 5, 6))


def test_linear_head_shapes():
    head = linear_head(16, 3, layout="nchw", pool="concat", dropout=0.1)
    assert head[-1].in_features == 32
    assert head(torch.randn(2, 16, 4, 4)).shape == (2, 3)


def test_mlp_head_matches_fastai_layout():
    head = mlp_head(8, 3, hidden=(5,), dropout=0.5)
    kinds = [type(m) for m in head]
    assert kinds == [Pool, nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert head[2].p == 0.25 and head[6].p == 0.5
    assert head.eval()(torch.randn(2, 8, 3, 3)).shape == (2, 3)
