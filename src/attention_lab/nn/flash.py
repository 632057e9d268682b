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

# Measured on the 2-core CPU, one thread, T = 1024 (python -m attention_lab.cli.bench flash-blocks;
# outputs/results/bench/2026-11-26-cpu/flash-blocks): every pair from 64 to 512 lies within
# 200-280 ms without a mask and 160-265 ms causal (one repeat, beside other jobs: about +-15%
# noise), no pair fastest in both; 256 x 256 is 21% behind the fastest without a mask and 6%
# causal, with 16x fewer Python-level steps than 64 x 64 (each a kernel launch on a GPU).
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
    seed: int | Tensor | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
    need_weights: bool = False,
) -> Tensor:
    """softmax(q k^T / sqrt(d_k) + mask) v, blockwise, without the (T, S) weights.

    q: (..., T, d_k), k: (..., S, d_k), v: (..., S, d_v), the same leading dims.
    mask: boolean (True = may attend) or float (added to the scores), broadcastable to
    (..., T, S); ``causal`` adds the causal mask (and skips the blocks it hides). A float mask
    that requires grad (a learned position bias) gets its gradient: backward writes each block's
    dS into a (..., T, S) buffer, the size of the scores rather than the mask's (for a (T, S) mask
    shared by every head, B*H times larger), then sums it over the dims the mask was broadcast
    along. ALiBi-like and relative biases are (B, H, T, T) by the time they get here anyway.
    dropout_p: attention dropout; the keep-mask comes from ``seed``, an int or a one-element
    integer tensor (drawn from torch's generator on q's device when None, so ``torch.manual_seed``
    makes a run repeatable).
    Returns the output (..., T, d_v). It never forms the weights: ``need_weights=True`` is
    refused; ``MultiHeadAttention`` falls back to the explicit path when asked for them.
    """
    if need_weights:
        raise ValueError(
            "need_weights=True: flash_attention never forms the attention weights; use "
            "attention.scaled_dot_product_attention (MultiHeadAttention switches to it by itself)"
        )
    check_blocks(block_q, block_k)
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
        seed = draw_seed(q.device)
    elif isinstance(seed, Tensor):  # hashed in int64, as ints are; a copy, kept for backward
        seed = seed.to(device=q.device, dtype=torch.int64, copy=True)
    return _FlashAttention.apply(q, k, v, mask, causal, dropout_p, seed, block_q, block_k)


def check_blocks(block_q: int | None, block_k: int | None) -> None:
    """Refuse a block size that is not a positive integer (None: the default, passes)."""
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise ValueError(f"{name}={size!r} must be a positive integer (a number of rows)")


def draw_seed(device: torch.device) -> Tensor:
    """A dropout seed from torch's generator (``torch.manual_seed`` repeats it), as a 0-d
    int64 tensor on ``device``: never read back, so no device sync, and torch.compile traces
    it unbroken. The Triton kernel draws its seed here too, so both drop the same entries."""
    return torch.randint(2**31 - 1, (), device=device)


def _check_mask(mask: Tensor, scores_shape: torch.Size) -> None:
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"mask has dtype {mask.dtype}; pass a bool (True = may attend) or float mask"
        )
    try:
        torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores_shape)} (..., T, S)"
        ) from None


class _FlashAttention(torch.autograd.Function):
    """Forward and backward of ``flash_attention``: saves Q, K, V, O and L, never P.

    Inside, the leading dims are flattened into one, N = B H, so that every product is one
    batched ``bmm``; S_ij is turned into P_ij and dP_ij into dS_ij in place, and the sums
    O_i, dQ_i, dK_j, dV_j grow by ``baddbmm_``, so a block allocates its (N, B_r, B_c) scores
    once. Grad mode is off in here, so the in-place updates are safe.
    """

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        causal: bool,
        dropout_p: float,
        seed: int | Tensor | None,
        block_q: int,
        block_k: int,
    ) -> Tensor:
        *lead, tgt_len, d_k = q.shape
        src_len, d_v = k.size(-2), v.size(-1)
        scale = 1.0 / math.sqrt(d_k)
        acc_dtype = _accumulation_dtype(q)
        block_mask = _block_mask(mask, tgt_len, src_len)
        q3, k3, v3 = (_flatten(x) for x in (q, k, v))  # (N, T, d_k), (N, S, d_k), (N, S, d_v)
        out = _empty_output(q, tgt_len, d_v)  # (..., T, d_v)
        log_sum_exp = q3.new_empty(q3.size(0), tgt_len, 1, dtype=acc_dtype)  # (N, T, 1): L

        for i0 in range(0, tgt_len, block_q):
            i1 = min(i0 + block_q, tgt_len)
            q_i = q3[:, i0:i1] * scale  # (N, B_r, d_k)
            row_max = q_i.new_full((q3.size(0), i1 - i0, 1), -math.inf, dtype=acc_dtype)  # m_i
            row_sum = torch.zeros_like(row_max)  # (N, B_r, 1): l_i
            acc = q_i.new_zeros((q3.size(0), i1 - i0, d_v), dtype=acc_dtype)  # (N, B_r, d_v): O_i
            for j0 in range(0, _key_stop(i1, src_len, causal), block_k):
                j1 = min(j0 + block_k, src_len)
                scores = _scores(q_i, k3[:, j0:j1], block_mask, lead, causal, i0, j0, acc_dtype)
                new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))  # m_new
                # A row that has seen only -inf keeps m = -inf; shifting by 0 instead gives
                # exp(-inf) = 0 rather than exp(-inf - -inf) = NaN.
                shift = new_max.masked_fill(new_max == -math.inf, 0.0)  # (N, B_r, 1)
                probs = scores.sub_(shift).exp_()  # (N, B_r, B_c): P_ij, in place of S_ij
                rescale = (row_max - shift).exp_()  # (N, B_r, 1): exp(m_i - m_new)
                row_sum.mul_(rescale).add_(probs.sum(dim=-1, keepdim=True))
                if dropout_p > 0.0:
                    probs.mul_(_dropout_scale(seed, dropout_p, lead, i0, i1, j0, j1, q))
                _add_product(acc.mul_(rescale), probs, v3[:, j0:j1])  # O_i += P_ij V_j
                row_max = new_max
            empty_row = row_sum == 0  # (N, B_r, 1): no key was allowed
            acc.div_(row_sum.masked_fill(empty_row, 1.0))  # (N, B_r, d_v)
            out[..., i0:i1, :] = acc.view(*lead, i1 - i0, d_v)
            log_sum_exp[:, i0:i1] = (shift + row_sum.log()).masked_fill_(empty_row, math.inf)

        ctx.save_for_backward(q, k, v, out, log_sum_exp, *(() if mask is None else (mask,)))
        ctx.settings = (causal, dropout_p, seed, block_q, block_k, scale, mask is not None)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, log_sum_exp, *maybe_mask = ctx.saved_tensors
        causal, dropout_p, seed, block_q, block_k, scale, has_mask = ctx.settings
        *lead, tgt_len, _ = q.shape
        src_len = k.size(-2)
        acc_dtype = _accumulation_dtype(q)
        block_mask = _block_mask(maybe_mask[0] if has_mask else None, tgt_len, src_len)
        q3, k3, v3 = (_flatten(x) for x in (q, k, v))  # (N, T, d_k), (N, S, d_k), (N, S, d_v)
        q3 = q3 * scale  # (N, T, d_k): scale Q, once
        grad_out3 = _flatten(grad_out)  # (N, T, d_v)

        # D_i = rowsum(dO_i * O_i): (N, T, 1)
        delta = (grad_out3.to(acc_dtype) * _flatten(out).to(acc_dtype)).sum(-1, keepdim=True)
        grad_q = torch.zeros_like(q3, dtype=acc_dtype)  # (N, T, d_k)
        grad_k = torch.zeros_like(k3, dtype=acc_dtype)  # (N, S, d_k)
        grad_v = torch.zeros_like(v3, dtype=acc_dtype)  # (N, S, d_v)
        # A learned float mask (a position bias) is added to the scores: its gradient is dS.
        grad_mask = None
        if ctx.needs_input_grad[3]:
            grad_mask = q3.new_zeros(*lead, tgt_len, src_len, dtype=acc_dtype)  # (..., T, S)

        for j0 in range(0, src_len, block_k):
            j1 = min(j0 + block_k, src_len)
            k_j, v_j = k3[:, j0:j1], v3[:, j0:j1]  # (N, B_c, d_k), (N, B_c, d_v)
            first = (j0 // block_q) * block_q if causal else 0  # query blocks above see none
            for i0 in range(first, tgt_len, block_q):
                i1 = min(i0 + block_q, tgt_len)
                q_i, grad_out_i = q3[:, i0:i1], grad_out3[:, i0:i1]  # (N, B_r, d_k), (.., d_v)
                scores = _scores(q_i, k_j, block_mask, lead, causal, i0, j0, acc_dtype)
                probs = scores.sub_(log_sum_exp[:, i0:i1]).exp_()  # (N, B_r, B_c): P_ij
                grad_probs = torch.bmm(grad_out_i, v_j.mT).to(acc_dtype)  # dP_ij
                dropped = probs  # what the forward multiplied with V_j
                if dropout_p > 0.0:
                    keep = _dropout_scale(seed, dropout_p, lead, i0, i1, j0, j1, q)
                    dropped = probs * keep
                    grad_probs.mul_(keep)
                _add_product(grad_v[:, j0:j1], dropped.mT, grad_out_i)  # dV_j += P_ij^T dO_i
                grad_scores = grad_probs.sub_(delta[:, i0:i1]).mul_(probs)  # dS_ij
                if grad_mask is not None:
                    grad_mask[..., i0:i1, j0:j1] = grad_scores.view(*lead, *grad_scores.shape[1:])
                _add_product(grad_q[:, i0:i1], grad_scores, k_j, alpha=scale)  # dQ_i
                _add_product(grad_k[:, j0:j1], grad_scores.mT, q_i)  # dK_j (q_i holds the scale)

        grads = (
            grad_q.to(q.dtype).view(q.shape),
            grad_k.to(k.dtype).view(k.shape),
            grad_v.to(v.dtype).view(v.shape),
        )
        if grad_mask is not None:  # summed over the dims the mask was broadcast along
            grad_mask = grad_mask.sum_to_size(maybe_mask[0].shape).to(maybe_mask[0].dtype)
        return (*grads, grad_mask, None, None, None, None, None)


def _accumulation_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half-precision inputs (as the papers' kernels), the input's own dtype above."""
    return torch.promote_types(x.dtype, torch.float32)


def _empty_output(q: Tensor, tgt_len: int, d_v: int) -> Tensor:
    """An empty (..., H, T, d_v) output laid out as (..., T, H, d_v) in memory, so that merging
    the heads back into (..., T, H d_v) is a view: the layer's output projection then saves the
    very storage this function saves, not a copy of it."""
    *outer, heads = q.shape[:-2] or (1,)
    out = q.new_empty(*outer, tgt_len, heads, d_v).transpose(-3, -2)  # (..., H, T, d_v)
    return out.view(*q.shape[:-1], d_v)  # (..., T, d_v) for 2-D inputs too


def _flatten(x: Tensor) -> Tensor:
    """(..., L, d) -> (N, L, d): one batch dim for ``bmm`` (a view where the strides allow)."""
    return x.reshape(-1, *x.shape[-2:])


def _block_mask(mask: Tensor | None, tgt_len: int, src_len: int) -> Tensor | None:
    """The mask as the blocks apply it: boolean True = may NOT attend (for ``masked_fill_``), or
    the float mask; its last two dims expanded to (T, S) (a view), so blocks can be sliced."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = ~mask  # before expanding: a (B, 1, 1, S) padding mask stays that small
    return mask.expand(*mask.shape[:-2], tgt_len, src_len)  # (..., T, S)


def _key_stop(i1: int, src_len: int, causal: bool) -> int:
    """One past the last key a query block ending before row ``i1`` may see."""
    return min(i1, src_len) if causal else src_len


def _scores(
    q_i: Tensor,
    k_j: Tensor,
    block_mask: Tensor | None,
    lead: list[int],
    causal: bool,
    i0: int,
    j0: int,
    acc_dtype: torch.dtype,
) -> Tensor:
    """S_ij = (scale Q_i) K_j^T, (N, B_r, B_c) in ``acc_dtype``, -inf where a query may not
    attend."""
    scores = torch.bmm(q_i, k_j.mT).to(acc_dtype)  # (N, B_r, B_c)
    i1, j1 = i0 + scores.size(1), j0 + scores.size(2)
    if block_mask is not None:
        block = block_mask[..., i0:i1, j0:j1]  # (B|1, H|1, B_r, B_c)
        by_head = scores.view(*lead, *scores.shape[1:])  # (..., B_r, B_c), the same memory
        if block.dtype == torch.bool:
            by_head.masked_fill_(block, -math.inf)
        else:
            by_head.add_(block)
    if causal and j1 - 1 > i0:  # the block reaches right of the diagonal
        rows = torch.arange(i0, i1, device=scores.device)[:, None]  # (B_r, 1)
        cols = torch.arange(j0, j1, device=scores.device)  # (B_c,)
        scores.masked_fill_(cols > rows, -math.inf)
    return scores


def _add_product(total: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> None:
    """total += alpha a @ b, batched; the product in b's dtype, the sum in total's."""
    if a.dtype == b.dtype == total.dtype:
        total.baddbmm_(a, b, alpha=alpha)
    else:
        total.add_(torch.bmm(a.to(b.dtype), b).to(total.dtype), alpha=alpha)


def _dropout_scale(
    seed: int | Tensor, p: float, lead: list[int], i0: int, i1: int, j0: int, j1: int, like: Tensor
) -> Tensor:
    """Z_ij: 1 / (1 - p) where the entry is kept, 0 where dropped, for one block (N, B_r, B_c)."""
    keep = dropout_keep_mask(seed, p, lead, range(i0, i1), range(j0, j1), device=like.device)
    return _flatten(keep).to(_accumulation_dtype(like)) / (1.0 - p)  # (N, B_r, B_c)


def dropout_keep_mask(
    seed: int | Tensor,
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
    seeded = seed_key(seed)
    row_key = _hash32(_hash32(lead_index ^ seeded) ^ row)  # (..., B_r, 1)
    bits = _hash32(row_key ^ col)  # (..., B_r, B_c), uniform on [0, 2^32)
    return (bits >> 8) < round((1.0 - p) * 2**24)


def seed_key(seed: int | Tensor) -> int | Tensor:
    """hash(seed ^ golden ratio): the dropout hash's first step (the Triton kernel takes it on
    the device). A Python int for an int seed, a tensor for a tensor seed: never read back, so
    neither syncs with the device nor breaks a torch.compile graph."""
    if isinstance(seed, Tensor):
        seed = seed.long()  # the hash's arithmetic needs int64 (an int32 seed would wrap)
    return _hash32((seed & _UINT32) ^ 0x9E3779B9)


def _hash32(x: Tensor | int) -> Tensor | int:
    """lowbias32 (C. Wellons), a well-mixing 32-bit integer hash, in int64 arithmetic (on
    tensors, or on Python ints)."""
    x = x & _UINT32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: Tensor | int, factor: int) -> Tensor | int:
    """(x * factor) mod 2^32 for x < 2^32, in two 16-bit halves so int64 never overflows."""
    low = x * (factor & 0xFFFF)
    high = ((x * (factor >> 16)) & 0xFFFF) << 16
    return (low + high) & _UINT32
