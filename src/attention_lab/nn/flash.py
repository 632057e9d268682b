"""FlashAttention, written out in PyTorch tensor operations (``model.attention=scratch_flash``).

The explicit path (``attention.scaled_dot_product_attention``) forms the whole T x S matrix of
scores, keeps its softmax for the backward pass, and so needs O(T S) memory per head. FlashAttention
(Dao et al., 2022; FlashAttention-2, Dao, 2023) computes the same output without ever holding that
matrix: it walks over blocks of keys, keeps a running softmax, and recomputes the scores in the
backward pass instead of storing them. What is saved for backward is Q, K, V, the output O and one
number per query row, the log-sum-exp L. This file is that algorithm, line by line, in the papers'
notation; the GPU kernels do the same arithmetic in on-chip memory.

Notation (FlashAttention-2, Algorithms 1 and 2), per batch element and head:
    Q in R^(T x d), K, V in R^(S x d); scale = 1 / sqrt(d).
    Q is cut into blocks Q_i of B_r rows, K and V into blocks K_j, V_j of B_c rows.

Forward, for each query block i:
    m_i = -inf, l_i = 0, O_i = 0                        running row max, row sum, unnormalised out
    for each key block j:
        S_ij = scale Q_i K_j^T                          (B_r, B_c): the only scores in memory
        m_new = max(m_i, rowmax(S_ij))
        P_ij = exp(S_ij - m_new)                        unnormalised probabilities of this block
        l_i = exp(m_i - m_new) l_i + rowsum(P_ij)       the old sum, rescaled to the new max
        O_i = exp(m_i - m_new) O_i + P_ij V_j           the old output, rescaled likewise
        m_i = m_new
    O_i = O_i / l_i;  L_i = m_i + log(l_i)              softmax(S) V, and log sum_j exp(S_ij)

    Why it is exact: softmax(S)_ts = exp(S_ts - m) / sum_s' exp(S_ts' - m) for any m, so partial
    sums taken under an old maximum only need the factor exp(m_old - m_new) to join the new ones.

Backward, with D_i = rowsum(dO_i * O_i) computed once:
    for each key block j, for each query block i:
        P_ij = exp(scale Q_i K_j^T - L_i)               the softmax, recomputed from L
        dV_j += P_ij^T dO_i
        dP_ij = dO_i V_j^T
        dS_ij = P_ij * (dP_ij - D_i)                    softmax's Jacobian; D_i = rowsum(dP * P)
        dQ_i += scale dS_ij K_j;   dK_j += scale dS_ij^T Q_i

Masks: entries that may not attend get S = -inf, so exp gives exactly 0. A row with no allowed
key at all ends with l = 0: its output is 0 (as the explicit path gives) and its L is +inf, so
that the backward's exp(S - L) is 0 too and every gradient stays finite. With ``causal=True``
(query t sees keys s <= t, top-left aligned like ``torch.tril``), key blocks that lie wholly to
the right of a query block are never visited: causal attention does about half the work.

Dropout: the forward drops entries of P_ij and the backward must drop the same ones. The papers'
kernels do not store the mask; they regenerate it from a seed and the entry's position with a
counter-based generator (Philox). ``dropout_keep_mask`` does the same with a small integer hash of
(seed, row, column), so the mask of an entry does not depend on the block sizes, the device or
the visiting order, and a test can build the whole (T, S) mask to check against. A kept entry is
scaled by 1 / (1 - p), as ``F.dropout`` does. D_i = rowsum(dO_i * O_i) still holds with dropout,
since O = (P * Z) V with Z the scaled keep-mask.

Precision: in bf16 / fp16 the matrix products run in the input dtype, while the running max, sum
and output (m, l, O) and the backward's dQ, dK, dV accumulate in fp32, as in the papers' kernels
(fp64 inputs accumulate in fp64).

Shape legend: as in ``attention.py``, with ``...`` for the leading dims (B, H), B_r / B_c for the
block sizes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Chosen by measurement on a 2-core CPU (python -m attention_lab.bench flash-blocks): large query
# blocks keep the matrix products big enough to run near BLAS speed; key blocks of 256 keep the
# (B_r, B_c) score block small. The README's benchmark section has the numbers.
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256

_UINT32 = 0xFFFFFFFF


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    seed: int | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> Tensor:
    """softmax(q k^T / sqrt(d_k) + mask) v, blockwise, without the (T, S) weights.

    q: (..., T, d_k), k: (..., S, d_k), v: (..., S, d_v), the same leading dims.
    mask: boolean (True = may attend) or float (added to the scores), broadcastable to
    (..., T, S); ``causal`` adds the causal mask (and skips the blocks it hides).
    dropout_p: attention dropout; the keep-mask comes from ``seed`` (drawn from torch's global
    generator when None, so ``torch.manual_seed`` makes a run repeatable).
    Returns the output (..., T, d_v). It never forms the weights; ask the explicit path for them.
    """
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"{name}={size!r} must be a positive integer (a number of rows)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p} must be in [0, 1)")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.size(-1) != k.size(-1):
        raise ValueError(
            f"flash_attention takes q (..., T, d_k), k (..., S, d_k) and v (..., S, d_v) with the "
            f"same leading dims; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if mask is not None:
        _check_mask(mask, q.shape[:-1] + k.shape[-2:-1])
    if dropout_p > 0.0 and seed is None:
        seed = int(torch.randint(2**31 - 1, ()).item())
    return _FlashAttention.apply(q, k, v, mask, causal, dropout_p, seed or 0, block_q, block_k)


def _check_mask(mask: Tensor, scores_shape: torch.Size) -> None:
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"mask has dtype {mask.dtype}; pass a bool (True = may attend) or float mask"
        )
    if mask.requires_grad:
        raise ValueError(
            "mask requires grad: scratch_flash does not differentiate the mask (use the explicit "
            "path, model.attention=scratch, for a learned additive bias)"
        )
    try:
        torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores_shape)} (..., T, S)"
        ) from None


class _FlashAttention(torch.autograd.Function):
    """Forward and backward of ``flash_attention``: saves Q, K, V, O and L, never P."""

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        causal: bool,
        dropout_p: float,
        seed: int,
        block_q: int,
        block_k: int,
    ) -> Tensor:
        *lead, tgt_len, _ = q.shape
        src_len = k.size(-2)
        scale = 1.0 / math.sqrt(q.size(-1))
        acc_dtype = _accumulation_dtype(q)
        mask = _full_size(mask, tgt_len, src_len)
        out = q.new_empty(*lead, tgt_len, v.size(-1))  # (..., T, d_v)
        log_sum_exp = q.new_empty(*lead, tgt_len, dtype=acc_dtype)  # (..., T): L

        for i0 in range(0, tgt_len, block_q):
            i1 = min(i0 + block_q, tgt_len)
            q_i = q[..., i0:i1, :] * scale  # (..., B_r, d_k)
            row_max = q.new_full((*lead, i1 - i0, 1), -math.inf, dtype=acc_dtype)  # m_i
            row_sum = q.new_zeros((*lead, i1 - i0, 1), dtype=acc_dtype)  # l_i
            acc = q.new_zeros((*lead, i1 - i0, v.size(-1)), dtype=acc_dtype)  # O_i
            for j0 in range(0, _key_stop(i1, src_len, causal), block_k):
                j1 = min(j0 + block_k, src_len)
                scores = _masked_scores(q_i, k[..., j0:j1, :], mask, causal, i0, i1, j0, j1)
                new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))  # m_new
                # A row that has seen only -inf keeps m = -inf; shifting by 0 instead gives
                # exp(-inf) = 0 rather than exp(-inf - -inf) = NaN.
                shift = new_max.masked_fill(new_max == -math.inf, 0.0)  # (..., B_r, 1)
                probs = torch.exp(scores - shift)  # (..., B_r, B_c): P_ij
                rescale = torch.exp(row_max - shift)  # (..., B_r, 1): exp(m_i - m_new)
                row_sum = rescale * row_sum + probs.sum(dim=-1, keepdim=True)
                if dropout_p > 0.0:
                    probs = probs * _dropout_scale(seed, dropout_p, lead, i0, i1, j0, j1, q)
                acc = rescale * acc + (probs.to(v.dtype) @ v[..., j0:j1, :]).to(acc_dtype)
                row_max = new_max
            empty_row = row_sum == 0  # (..., B_r, 1): no key was allowed
            out[..., i0:i1, :] = (acc / row_sum.masked_fill(empty_row, 1.0)).to(out.dtype)
            lse = (shift + row_sum.log()).masked_fill(empty_row, math.inf)  # L_i
            log_sum_exp[..., i0:i1] = lse.squeeze(-1)

        ctx.save_for_backward(q, k, v, out, log_sum_exp, *(() if mask is None else (mask,)))
        ctx.settings = (causal, dropout_p, seed, block_q, block_k, scale, mask is not None)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, log_sum_exp, *maybe_mask = ctx.saved_tensors
        causal, dropout_p, seed, block_q, block_k, scale, has_mask = ctx.settings
        mask = maybe_mask[0] if has_mask else None
        *lead, tgt_len, _ = q.shape
        src_len = k.size(-2)
        acc_dtype = _accumulation_dtype(q)

        delta = (grad_out.to(acc_dtype) * out.to(acc_dtype)).sum(dim=-1)  # (..., T): D_i
        grad_q = torch.zeros_like(q, dtype=acc_dtype)  # (..., T, d_k)
        grad_k = torch.zeros_like(k, dtype=acc_dtype)  # (..., S, d_k)
        grad_v = torch.zeros_like(v, dtype=acc_dtype)  # (..., S, d_v)

        for j0 in range(0, src_len, block_k):
            j1 = min(j0 + block_k, src_len)
            k_j, v_j = k[..., j0:j1, :], v[..., j0:j1, :]  # (..., B_c, d_k), (..., B_c, d_v)
            grad_k_j = grad_k[..., j0:j1, :]  # views: accumulated in place
            grad_v_j = grad_v[..., j0:j1, :]
            first = (j0 // block_q) * block_q if causal else 0  # query blocks above see none
            for i0 in range(first, tgt_len, block_q):
                i1 = min(i0 + block_q, tgt_len)
                q_i = q[..., i0:i1, :] * scale  # (..., B_r, d_k)
                scores = _masked_scores(q_i, k_j, mask, causal, i0, i1, j0, j1)
                probs = torch.exp(scores - log_sum_exp[..., i0:i1, None])  # (..., B_r, B_c): P_ij
                grad_out_i = grad_out[..., i0:i1, :]  # (..., B_r, d_v)
                grad_probs = (grad_out_i @ v_j.mT).to(acc_dtype)  # (..., B_r, B_c): dP_ij
                if dropout_p > 0.0:
                    keep = _dropout_scale(seed, dropout_p, lead, i0, i1, j0, j1, q)
                    dropped = probs * keep  # what the forward multiplied with V
                    grad_probs = grad_probs * keep
                else:
                    dropped = probs
                grad_v_j += (dropped.to(v.dtype).mT @ grad_out_i).to(acc_dtype)
                grad_scores = probs * (grad_probs - delta[..., i0:i1, None])  # dS_ij
                grad_scores = grad_scores.to(q.dtype)
                grad_q[..., i0:i1, :] += (grad_scores @ k_j).to(acc_dtype) * scale
                grad_k_j += (grad_scores.mT @ q_i).to(acc_dtype)  # q_i already carries the scale

        grads = (grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype))
        return (*grads, None, None, None, None, None, None)


def _accumulation_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half-precision inputs (as the papers' kernels), the input's own dtype above."""
    return torch.promote_types(x.dtype, torch.float32)


def _full_size(mask: Tensor | None, tgt_len: int, src_len: int) -> Tensor | None:
    """The mask with its last two dims expanded to (T, S) (a view), so blocks can be sliced."""
    if mask is None:
        return None
    return mask.expand(*mask.shape[:-2], tgt_len, src_len)  # (..., T, S)


def _key_stop(i1: int, src_len: int, causal: bool) -> int:
    """One past the last key a query block ending before row ``i1`` may see."""
    return min(i1, src_len) if causal else src_len


def _masked_scores(
    q_i: Tensor,
    k_j: Tensor,
    mask: Tensor | None,
    causal: bool,
    i0: int,
    i1: int,
    j0: int,
    j1: int,
) -> Tensor:
    """S_ij = (scale Q_i) K_j^T in fp32, with -inf where a query may not attend."""
    scores = (q_i @ k_j.mT).to(_accumulation_dtype(q_i))  # (..., B_r, B_c)
    if mask is not None:
        block = mask[..., i0:i1, j0:j1]
        if block.dtype == torch.bool:
            scores = scores.masked_fill(~block, -math.inf)
        else:
            scores = scores + block.to(scores.dtype)
    if causal and j1 - 1 > i0:  # the block reaches right of the diagonal
        rows = torch.arange(i0, i1, device=scores.device)[:, None]  # (B_r, 1)
        cols = torch.arange(j0, j1, device=scores.device)  # (B_c,)
        scores = scores.masked_fill(cols > rows, -math.inf)
    return scores


def _dropout_scale(
    seed: int, p: float, lead: list[int], i0: int, i1: int, j0: int, j1: int, like: Tensor
) -> Tensor:
    """Z_ij: 1 / (1 - p) where the entry is kept, 0 where dropped, for one block."""
    keep = dropout_keep_mask(seed, p, lead, range(i0, i1), range(j0, j1), device=like.device)
    return keep.to(_accumulation_dtype(like)) / (1.0 - p)  # (..., B_r, B_c)


def dropout_keep_mask(
    seed: int,
    p: float,
    lead: list[int] | torch.Size,
    rows: range,
    cols: range,
    *,
    device: torch.device | None = None,
) -> Tensor:
    """Which attention entries dropout keeps: True with probability 1 - p, independently.

    Entry (lead index n, row t, column s) is kept when a hash of (seed, n, t, s) falls below
    (1 - p) 2^24; so the answer depends only on those numbers, not on which block asks.
    ``dropout_keep_mask(seed, p, (B, H), range(T), range(S))`` is the full (B, H, T, S) mask.
    """
    n_lead = math.prod(lead)
    lead_index = torch.arange(n_lead, device=device).view(*lead, 1, 1)  # (..., 1, 1)
    row = torch.arange(rows.start, rows.stop, device=device).view(-1, 1)  # (B_r, 1)
    col = torch.arange(cols.start, cols.stop, device=device)  # (B_c,)
    seeded = _hash32(torch.tensor(seed & _UINT32, device=device) ^ 0x9E3779B9)
    row_key = _hash32(_hash32(lead_index ^ seeded) ^ row)  # (..., B_r, 1)
    bits = _hash32(row_key ^ col)  # (..., B_r, B_c), uniform on [0, 2^32)
    return (bits >> 8) < round((1.0 - p) * 2**24)


def _hash32(x: Tensor) -> Tensor:
    """lowbias32 (C. Wellons), a well-mixing 32-bit integer hash, in int64 arithmetic."""
    x = x & _UINT32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: Tensor, factor: int) -> Tensor:
    """(x * factor) mod 2^32 for x < 2^32, in two 16-bit halves so int64 never overflows."""
    low = x * (factor & 0xFFFF)
    high = ((x * (factor >> 16)) & 0xFFFF) << 16
    return (low + high) & _UINT32
