"""The fused sampled-softmax loss and the hand-written backward passes against autograd."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from sessionrec.training.loss import shared_negatives_lse
from sessionrec.training.model import gather, normalize, unique_rows
from sessionrec.training.trainer import _collisions


def _reference(q, n, pos, bias, excluded, t):
    logits = q @ n.T / t - bias[None, :]
    if excluded is not None:
        logits = logits.index_put(
            (excluded[0], excluded[1]), torch.tensor(float("-inf"), dtype=q.dtype)
        )
    return torch.logsumexp(torch.cat([pos[:, None], logits], dim=1), dim=1)


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(12, 6, generator=g, dtype=dtype), dim=1).requires_grad_()
    n = F.normalize(torch.randn(9, 6, generator=g, dtype=dtype), dim=1).requires_grad_()
    pos = torch.randn(12, generator=g, dtype=dtype).mul(3).requires_grad_()
    bias = torch.randn(9, generator=g, dtype=dtype)
    excluded = torch.tensor([[0, 3, 3, 11], [2, 0, 8, 5]])
    return q, n, pos, bias, excluded


def test_fused_loss_value_and_gradient_equal_autograd_in_float64() -> None:
    q, n, pos, bias, excluded = _inputs(torch.float64)
    weights = torch.linspace(0.5, 2.0, 12, dtype=torch.float64)
    got = shared_negatives_lse(q, n, pos, bias, excluded, 0.1, False)
    want = _reference(q, n, pos, bias, excluded, 0.1)
    assert torch.allclose(got, want, atol=1e-10)
    grads = torch.autograd.grad((got * weights).sum(), (q, n, pos))
    wants = torch.autograd.grad((want * weights).sum(), (q, n, pos))
    for a, b in zip(grads, wants, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_bf16_loss_is_close_to_float32() -> None:
    q, n, pos, bias, excluded = _inputs(torch.float32)
    got = shared_negatives_lse(q, n, pos, bias, excluded, 0.1, True)
    want = _reference(q, n, pos, bias, excluded, 0.1)
    assert torch.allclose(got, want, atol=0.05)


def test_normalize_and_gather_match_stock_operators() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 3, 3, 6, 1])
    out = normalize(gather(x, index))
    ref = F.normalize(x[index], dim=1)
    assert torch.allclose(out, ref)
    w = torch.randn(5, 5, generator=g, dtype=torch.float64)
    (a,) = torch.autograd.grad((out * w).sum(), x)
    (b,) = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(a, b, atol=1e-12)


def test_unique_rows_and_collisions() -> None:
    values = torch.tensor([5, 1, 5, 9, 1])
    used, local = unique_rows(values, 12)
    assert used.tolist() == [1, 5, 9]
    assert torch.equal(used[local], values)
    target = np.array([4, 7, 4, 2, 7, 4])
    pairs = _collisions(target, 3, 10)  # in-batch negatives 4, 7, 4 in columns 10, 11, 12
    got = sorted(map(tuple, pairs.T.tolist()))
    assert got == [(0, 10), (0, 12), (1, 11), (2, 10), (2, 12), (4, 11), (5, 10), (5, 12)]
