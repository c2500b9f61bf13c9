"""A fused sampled-softmax log-sum-exp for shared negatives.

The (B, N) logits matrix is the dominant cost of training on a CPU. This autograd function makes
as few passes over it as it can: the temperature and the sampling correction are folded into
the matrix product (as extra columns), no row maximum is taken (cosine logits have a known upper
bound, subtracted instead), excluded pairs are zeroed sparsely, and the normalisation is folded
into the backward scale. With `bf16` the matrix lives in bfloat16 from product to gradient.
"""

from __future__ import annotations

from typing import Any

import torch


class SharedNegativesLSE(torch.autograd.Function):
    """lse_i = log(exp(pos_i) + sum_j exp(q_i . n_j / t - bias_j)), excluded pairs left out.

    Inputs: queries (B, d) and negatives (N, d), both L2-normalised (so q . n <= 1); pos (B,)
    positive logits (already scaled and corrected); bias (N,) log expected counts; excluded
    (2, K) int64 (row, column) pairs that are no negatives, or None; temperature; bf16.
    Returns lse (B,).
    """

    @staticmethod
    def forward(
        ctx: Any,
        queries: torch.Tensor,
        negatives: torch.Tensor,
        pos: torch.Tensor,
        bias: torch.Tensor,
        excluded: torch.Tensor | None,
        temperature: float,
        bf16: bool,
    ) -> torch.Tensor:
        # Every negative logit is at most 1/t - min(bias); shifting by that bound (or by the
        # largest positive, if larger) keeps exp() from overflowing without a row maximum.
        shift = max(1.0 / temperature - float(bias.min()), float(pos.max()))
        ones = torch.ones(len(queries), 2, dtype=queries.dtype)
        # The correction in two columns (high and low part) so bfloat16 does not round it.
        corr = -(bias + shift)
        dtype = torch.bfloat16 if bf16 else queries.dtype
        hi = corr.to(dtype)
        lo = (corr - hi.to(corr.dtype)).to(dtype)
        q = torch.cat([queries / temperature, ones], dim=1).to(dtype)
        n = torch.cat([negatives.to(dtype), hi[:, None], lo[:, None]], dim=1)
        exps = (q @ n.T).exp_()
        if excluded is not None and excluded.shape[1]:
            exps[excluded[0], excluded[1]] = 0
        pos_exp = torch.exp(pos - shift)
        # bfloat16 sums accumulate in float32 inside; only the result is rounded (2^-9).
        total = exps.sum(dim=1).to(pos.dtype) + pos_exp
        ctx.save_for_backward(q, n, exps, total, pos_exp)
        ctx.temperature = temperature
        return torch.log(total) + shift

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, n, exps, total, pos_exp = ctx.saved_tensors
        scale = grad / total
        probs = exps.mul_(scale.to(exps.dtype)[:, None])  # d lse / d logit, in place
        d = q.shape[1] - 2
        grad_q = (probs @ n[:, :d]).to(grad.dtype) / ctx.temperature
        grad_n = (probs.T @ q[:, :d]).to(grad.dtype)
        return grad_q, grad_n, scale * pos_exp, None, None, None, None


def shared_negatives_lse(
    queries: torch.Tensor,
    negatives: torch.Tensor,
    pos: torch.Tensor,
    bias: torch.Tensor,
    excluded: torch.Tensor | None,
    temperature: float,
    bf16: bool,
) -> torch.Tensor:
    out: torch.Tensor = SharedNegativesLSE.apply(  # type: ignore[no-untyped-call]  # untyped in torch's stubs
        queries, negatives, pos, bias, excluded, temperature, bf16
    )
    return out
