"""FlashAttention as a hand-written Triton kernel (``model.attention=scratch_triton``).

``flash.py`` writes FlashAttention-2 in PyTorch tensor operations: every block product is a
kernel launch from Python, and the (B_r, B_c) scores of a block still go through the GPU's main
memory. This file is the same algorithm as the papers run it: one Triton program per (query
block, batch x head) keeps Q_i, the running max m_i, sum l_i and output O_i in registers and
on-chip memory while it walks over the key blocks, so the scores never leave the chip. Read
``flash.py`` first: the notation, the masking rules, the empty-row convention (output 0, L = +inf)
and the dropout hash are the same, and so are the numbers (the tests compare the two, dropout
masks included, bit for bit in the masks).

Three kernels:
    _forward         grid (B H, T / B_r): O_i and L_i for one query block      (Algorithm 1)
    _backward_dk_dv  grid (B H, S / B_c): dK_j, dV_j for one key block, over query blocks
    _backward_dq     grid (B H, T / B_r): dQ_i for one query block, over key blocks
The backward is split in two, as FlashAttention-2 does, so that every program writes only the
rows it owns (no atomic adds); each recomputes P_ij = exp(scale Q_i K_j^T - L_i).
D_i = rowsum(dO_i * O_i) is one PyTorch line before them.

Where it runs: a CUDA GPU (Triton compiles the kernels), or the CPU under Triton's interpreter
(``TRITON_INTERPRET=1`` in the environment before Python starts), which executes the same code
with NumPy, slowly: that is how the CPU-only test suite covers these kernels. Masks: any bool or
float mask broadcastable to (B, H, T, S) enters as an additive bias (0 / -inf for bool) read
through its broadcast strides, so a (B, 1, 1, S) padding mask stays (B, 1, 1, S) in memory.
Precision: the block products run in q's dtype (fp32 as TF32 only when PyTorch's
``torch.backends.cuda.matmul.allow_tf32`` allows it), and m, l, O, dQ, dK, dV accumulate in fp32.
Exact fp32 products are slow here (compiled for sm_90 they spill registers heavily): on a GPU,
train in bf16-mixed. Head sizes up to 256; q, k and v have the same head size.

State: checked in the interpreter (tests/test_triton_flash.py) and compiled for sm_90 on a CPU
with ``triton.compile`` (every dtype, d = 64, 128, 256, masks, dropout: each program fits the
on-chip memory). Run once on an H100 (outputs/results/bench/2026-11-26-h100/): output and
gradients within 2.7e-7 (fp32) and 4.1e-3 (bf16) of the fp32 textbook computation, as close as
nn.MultiheadAttention; 1.13-1.17x the time of PyTorch's FlashAttention-2 kernel at T = 8192,
with the same memory. The block sizes are not tuned.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

from attention_lab.nn.flash import _check_mask, _empty_output, check_blocks, draw_seed

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with PyTorch's Linux CUDA wheels
    triton = None
try:  # what Triton raises when a program's blocks do not fit on chip
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover

    class OutOfResources(Exception):
        """Stands in for Triton's error where Triton (or that name) is missing."""


MAX_HEAD_DIM = 256
# (num_stages, num_warps) that ``pipeline`` sets for the launches inside it; None: the default.
_PIPELINE: ContextVar[tuple[int | None, int | None]] = ContextVar(
    "triton_flash_pipeline", default=(None, None)
)


def check_pipeline(num_stages: int | None = None, num_warps: int | None = None) -> None:
    """Refuse stages below 1 and warps that are not a power of two up to 32 (None passes)."""
    if num_stages is not None and num_stages < 1:
        raise ValueError(f"num_stages={num_stages} must be 1 or more")
    if num_warps is not None and (num_warps < 1 or num_warps > 32 or num_warps & (num_warps - 1)):
        raise ValueError(f"num_warps={num_warps} must be a power of two from 1 to 32")


@contextlib.contextmanager
def pipeline(num_stages: int | None = None, num_warps: int | None = None) -> Iterator[None]:
    """Launch the kernels with ``num_stages`` (software pipelining: key/value blocks loaded
    ahead while one is computed) and ``num_warps`` (threads per program / 32) inside the block,
    instead of ``_kernel_settings``' choice: what ``bench flash-blocks --kinds scratch_triton
    --stages --warps`` tries. A forward run inside the block keeps them for its backward."""
    check_pipeline(num_stages, num_warps)
    token = _PIPELINE.set((num_stages, num_warps))
    try:
        yield
    finally:
        _PIPELINE.reset(token)


def available() -> str | None:
    """None when the kernels can run here; otherwise why not, naming what to change."""
    if triton is None:
        return (
            "model.attention=scratch_triton needs the triton package, which comes with PyTorch on "
            "Linux (pip install triton; there is none for macOS); choose another model.attention"
        )
    return None


def device_problem(on_cuda: bool) -> str | None:
    """None when the kernels can run on this device (CUDA, or the CPU under the interpreter);
    otherwise what to change. The config check and the kernel's own call both say this."""
    if on_cuda or interpreted():
        return None
    return (
        "model.attention=scratch_triton runs a Triton kernel, which needs a CUDA GPU "
        "(trainer=gpu); on the CPU choose model.attention=scratch_flash (the same algorithm "
        "in PyTorch), or set TRITON_INTERPRET=1 to run it in Triton's interpreter (slow)"
    )


def interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    seed: int | Tensor | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v by the Triton kernels, without the (T, S) weights.

    q: (B, H, T, d), k, v: (B, H, S, d). mask: bool (True = may attend) or float (added),
    broadcastable to (B, H, T, S); ``causal`` adds the causal mask (top-left aligned) and skips
    the blocks it hides. Dropout keeps the entries ``flash.dropout_keep_mask(seed, p, (B, H),
    ...)`` keeps, so for one seed this kernel and ``flash.flash_attention`` drop the same ones.
    ``block_q``, ``block_k``: rows of queries and of keys per block, powers of two from 16
    (None: ``_kernel_settings``' choice; ``bench flash-blocks --kinds scratch_triton`` times them).
    Returns the output (B, H, T, d).
    """
    problem = available()
    if problem:
        raise RuntimeError(problem)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"triton_flash_attention takes (B, H, T, d) tensors; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[:2] != k.shape[:2] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"q (B, H, T, d), k and v (B, H, S, d) must share B and H, k and v also S; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not q.size(-1) == k.size(-1) == v.size(-1) or q.size(-1) > MAX_HEAD_DIM:
        raise ValueError(
            f"scratch_triton takes one head size up to {MAX_HEAD_DIM} for q, k and v; got "
            f"{q.size(-1)}, {k.size(-1)}, {v.size(-1)} (use model.attention=scratch_flash)"
        )
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(
            f"scratch_triton computes in fp32, fp16 or bf16; got {q.dtype} (use "
            f"model.attention=scratch_flash, or trainer.precision)"
        )
    if problem := device_problem(q.device.type == "cuda"):
        raise RuntimeError(problem)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p} must be in [0, 1)")
    check_triton_blocks(block_q, block_k)
    if mask is not None:
        _check_mask(mask, q.shape[:-1] + k.shape[-2:-1])
        if mask.requires_grad:
            raise ValueError(
                "mask requires grad: scratch_triton does not differentiate the mask (a learned "
                "position bias trains with model.attention=scratch_flash, scratch or torch)"
            )
    # One dtype for the products, q's, as autocast gives a matmul (fp32 bias_k/bias_v appended
    # to bf16 keys under autocast make the keys fp32).
    k, v = k.to(q.dtype), v.to(q.dtype)
    seed = _seed(seed, dropout_p, q)
    return _TritonFlashAttention.apply(q, k, v, mask, causal, dropout_p, seed, block_q, block_k)


def _seed(seed: int | Tensor | None, dropout_p: float, q: Tensor) -> Tensor | None:
    """The dropout seed as a one-element int64 tensor on q's device, which the kernels read
    (None without dropout). Drawn there when not given: never read back, so no device sync, and
    torch.compile traces it without a graph break."""
    if dropout_p == 0.0:
        return None
    if seed is None:
        return draw_seed(q.device).view(1)
    if isinstance(seed, Tensor):
        return (seed.reshape(1) & 0xFFFFFFFF).to(device=q.device, dtype=torch.int64)
    return torch.full((1,), seed & 0xFFFFFFFF, dtype=torch.int64, device=q.device)


def check_triton_blocks(block_q: int | None, block_k: int | None) -> None:
    """Refuse a block size that is not a power of two from 16, what ``tl.dot`` takes (None:
    ``_kernel_settings``' choice, passes)."""
    check_blocks(block_q, block_k)
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if size is not None and (size < 16 or size & (size - 1)):
            raise ValueError(f"{name}={size} must be a power of two from 16 (Triton kernel)")


def _bias(mask: Tensor | None, shape: torch.Size) -> Tensor | None:
    """The mask as an fp32 additive bias, expanded (a view, stride 0 where it broadcasts)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, -math.inf)
    return mask.float().expand(shape)  # (B, H, T, S)


class _TritonFlashAttention(torch.autograd.Function):
    """Launches the kernels; saves Q, K, V, O, L (and the bias), never P."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, dropout_p, seed, block_q, block_k):
        batch, heads, tgt_len, head_dim = q.shape
        src_len = k.size(2)
        bias = _bias(mask, torch.Size((batch, heads, tgt_len, src_len)))
        out = _empty_output(q, tgt_len, head_dim)  # (B, H, T, d), heads-inner memory
        log_sum_exp = q.new_empty(batch * heads, tgt_len, dtype=torch.float32)  # (B H, T): L
        tuning = (block_q, block_k, *_PIPELINE.get())
        settings = _kernel_settings(q, bias, causal, dropout_p, *tuning)
        grid = (batch * heads, triton.cdiv(tgt_len, settings["BLOCK_M"]))
        with _on_device(q):
            _forward[grid](
                q, k, v, out, log_sum_exp,
                *_strides(q, k, v, out), *_bias_args(bias, q),
                *_sizes_and_dropout(q, k, seed, dropout_p), **settings,
            )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, log_sum_exp, bias, seed)
        ctx.settings = (causal, dropout_p, tuning)  # the backward may run on another thread
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, log_sum_exp, bias, seed = ctx.saved_tensors
        causal, dropout_p, tuning = ctx.settings
        batch, heads, tgt_len, _ = q.shape
        grad_out = grad_out.to(q.dtype)  # the products pair it with q, k and v
        # D_i = rowsum(dO_i * O_i): (B H, T), fp32, rows contiguous as the kernels index them
        delta = (grad_out.float() * out.float()).sum(-1).reshape(batch * heads, tgt_len)
        delta = delta.contiguous()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = (
            *_strides(q, k, v, grad_out), *_bias_args(bias, q),
            *_sizes_and_dropout(q, k, seed, dropout_p),
        )  # fmt: skip
        settings = _kernel_settings(q, bias, causal, dropout_p, *tuning)
        with _on_device(q):
            _backward_dk_dv[(batch * heads, triton.cdiv(k.size(2), settings["BLOCK_N"]))](
                q, k, v, grad_out, log_sum_exp, delta, grad_k, grad_v,
                *grad_k.stride(), *grad_v.stride(), *common, **settings,
            )  # fmt: skip
            _backward_dq[(batch * heads, triton.cdiv(tgt_len, settings["BLOCK_M"]))](
                q, k, v, grad_out, log_sum_exp, delta, grad_q,
                *grad_q.stride(), *common, **settings,
            )  # fmt: skip
        return grad_q, grad_k, grad_v, None, None, None, None, None, None


def _on_device(q: Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it q's."""
    return torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()


def _strides(*tensors: Tensor) -> tuple[int, ...]:
    return tuple(s for t in tensors for s in t.stride())


def _bias_args(bias: Tensor | None, q: Tensor) -> tuple:
    """The bias pointer and its four strides (a dummy pointer when there is no mask)."""
    if bias is None:
        return (q, 0, 0, 0, 0)
    return (bias, *bias.stride())


def _sizes_and_dropout(q: Tensor, k: Tensor, seed: Tensor | None, p: float) -> tuple:
    """heads, T, S, the scale 1 / sqrt(d), and dropout's seed (a dummy pointer without
    dropout), keep threshold and scale."""
    keep_threshold = round((1.0 - p) * 2**24)  # kept when the hash's top 24 bits fall below
    return (q.size(1), q.size(2), k.size(2), 1.0 / math.sqrt(q.size(-1)),
            q if seed is None else seed, keep_threshold, 1.0 / (1.0 - p))  # fmt: skip


def _kernel_settings(
    q: Tensor,
    bias: Tensor | None,
    causal: bool,
    dropout_p: float,
    block_q: int | None = None,
    block_k: int | None = None,
    num_stages: int | None = None,
    num_warps: int | None = None,
) -> dict:
    """The kernels' compile-time settings. Block sizes and pipelining depth keep a program's
    on-chip memory under a Hopper GPU's 227 KiB: 64 x 64 blocks with 3 stages need too much for
    d = 256 in half precision or d > 64 in fp32 (Triton's figures, compiled for sm_90), so
    those take fewer stages (and fp32 at d > 128 smaller blocks). Not tuned for speed; given
    block sizes replace the 64s, and ``pipeline``'s stages and warps these. Larger blocks may
    not fit (bf16 128 x 64 blocks: 194 KiB for dK/dV at d = 64, 306 KiB at d = 128), and
    Triton then raises OutOfResources."""
    head_dim, fp32 = q.size(-1), q.dtype == torch.float32
    block, stages = 64, 3
    if fp32 and head_dim > 128:
        block, stages = 32, 2
    elif head_dim > 128:
        stages = 1
    elif fp32 and head_dim > 64:
        stages = 2
    tf32 = fp32 and torch.backends.cuda.matmul.allow_tf32
    return {
        "HEAD_DIM": head_dim,
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "BLOCK_M": block_q or block,
        "BLOCK_N": block_k or block,
        "CAUSAL": causal,
        "HAS_BIAS": bias is not None,
        "DROPOUT": dropout_p > 0.0,
        "PRECISION": "ieee" if fp32 and not tf32 else "tf32",
        "num_stages": num_stages or stages,
        "num_warps": num_warps
        or (8 if head_dim >= 128 or max(block_q or 0, block_k or 0) >= 128 else 4),
    }


# The kernels. Names follow flash.py: rows index queries t, cols keys s, dims a head's features.
# Tensors are (B, H, L, d) with explicit strides (stride_?b, stride_?h, stride_?l, stride_?d);
# ``base`` below is a tensor's pointer moved to one batch element and head.
if triton is not None:

    @triton.jit
    def _load_block(base, positions, dims, stride_l, stride_d, length, HEAD_DIM: tl.constexpr):
        """The rows ``positions`` of a (L, d) tensor: (len(positions), BLOCK_D), zeros outside."""
        inside = (positions[:, None] < length) & (dims[None, :] < HEAD_DIM)
        ptrs = base + positions[:, None] * stride_l + dims[None, :] * stride_d
        return tl.load(ptrs, mask=inside, other=0.0)

    @triton.jit
    def _store_block(base, block, positions, dims, stride_l, stride_d, length, HEAD_DIM):
        inside = (positions[:, None] < length) & (dims[None, :] < HEAD_DIM)
        ptrs = base + positions[:, None] * stride_l + dims[None, :] * stride_d
        tl.store(ptrs, block.to(base.dtype.element_ty), mask=inside)

    @triton.jit
    def _hash32(x):
        """lowbias32 on uint32, the same function as ``flash._hash32``."""
        x = x ^ (x >> 16)
        x = x * tl.full([], 0x7FEB352D, tl.uint32)
        x = x ^ (x >> 15)
        x = x * tl.full([], 0x846CA68B, tl.uint32)
        return x ^ (x >> 16)

    @triton.jit
    def _seed_key(Seed, DROPOUT: tl.constexpr):
        """flash.seed_key of the seed tensor: hash(seed ^ golden ratio) (0 without dropout)."""
        key = tl.full([], 0, tl.uint32)
        if DROPOUT:
            key = _hash32(tl.load(Seed).to(tl.uint32) ^ tl.full([], 0x9E3779B9, tl.uint32))
        return key

    @triton.jit
    def _keep(seeded, bh, rows, cols, threshold):
        """Z's pattern for rows x cols of head bh: True where dropout keeps the entry."""
        head_key = _hash32(bh.to(tl.uint32) ^ seeded.to(tl.uint32))
        row_key = _hash32(head_key ^ rows.to(tl.uint32))  # (BLOCK_M,)
        bits = _hash32(row_key[:, None] ^ cols[None, :].to(tl.uint32))  # (BLOCK_M, BLOCK_N)
        return (bits >> 8) < threshold

    @triton.jit
    def _scores(
        q, k, bias, stride_bt, stride_bs, rows, cols, tgt_len, src_len, scale,
        CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """S_ij = scale Q_i K_j^T + bias, fp32, -inf where a query may not attend."""
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (BLOCK_M, BLOCK_N)
        allowed = cols[None, :] < src_len
        if CAUSAL:
            allowed = allowed & (cols[None, :] <= rows[:, None])
        if HAS_BIAS:
            inside = (rows[:, None] < tgt_len) & (cols[None, :] < src_len)
            ptrs = bias + rows[:, None] * stride_bt + cols[None, :] * stride_bs
            s += tl.load(ptrs, mask=inside, other=0.0)
        return tl.where(allowed, s, -float("inf"))

    @triton.jit
    def _block_gradients(
        q, k, v, grad_out, log_sum_exp, delta, bias, stride_bt, stride_bs,
        rows, cols, tgt_len, src_len, scale, seeded, bh, threshold, keep_scale,
        CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        """The backward's inner step for block (i, j): P_ij as the forward applied it (dropout
        included) and dS_ij = P_ij * (dP_ij - D_i), both recomputed from L_i and D_i."""
        s = _scores(
            q, k, bias, stride_bt, stride_bs, rows, cols, tgt_len, src_len, scale,
            CAUSAL, HAS_BIAS, PRECISION,
        )  # fmt: skip
        p = tl.exp(s - log_sum_exp[:, None])  # P_ij: (BLOCK_M, BLOCK_N)
        grad_p = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)  # dP_ij
        applied = p
        if DROPOUT:
            keep = _keep(seeded, bh, rows, cols, threshold)
            applied = tl.where(keep, p * keep_scale, 0.0)
            grad_p = tl.where(keep, grad_p * keep_scale, 0.0)
        return applied, p * (grad_p - delta[:, None])

    @triton.jit
    def _forward(
        Q, K, V, Out, L,
        stride_qb, stride_qh, stride_ql, stride_qd,
        stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd,
        stride_ob, stride_oh, stride_ol, stride_od,
        Bias, stride_bb, stride_bh, stride_bt, stride_bs,
        heads, tgt_len, src_len, scale, Seed, threshold, keep_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr,
        DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """O_i = softmax(S_i.) V and L_i = log sum_j exp S_ij for one query block i."""
        bh, block = tl.program_id(0), tl.program_id(1)
        seeded = _seed_key(Seed, DROPOUT)  # dropout's hash key
        b, h = (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)  # no int32 overflow
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # query positions t
        dims = tl.arange(0, BLOCK_D)
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        bias = Bias + b * stride_bb + h * stride_bh
        q = _load_block(  # Q_i: (BLOCK_M, BLOCK_D)
            Q + b * stride_qb + h * stride_qh, rows, dims, stride_ql, stride_qd, tgt_len, HEAD_DIM
        )

        m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)  # running row max
        l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # unnormalised O_i
        stop = tl.minimum(src_len, (block + 1) * BLOCK_M) if CAUSAL else src_len
        for start in range(0, stop, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)  # key positions s
            k = _load_block(k_base, cols, dims, stride_kl, stride_kd, src_len, HEAD_DIM)  # K_j
            v = _load_block(v_base, cols, dims, stride_vl, stride_vd, src_len, HEAD_DIM)  # V_j
            s = _scores(
                q, k, bias, stride_bt, stride_bs, rows, cols, tgt_len, src_len, scale,
                CAUSAL, HAS_BIAS, PRECISION,
            )  # fmt: skip
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            shift = tl.where(m_new == -float("inf"), 0.0, m_new)  # rows with no key yet
            p = tl.exp(s - shift[:, None])  # P_ij, unnormalised
            rescale = tl.exp(m_i - shift)  # exp(m_old - m_new)
            l_i = l_i * rescale + tl.sum(p, axis=1)
            if DROPOUT:
                p = tl.where(_keep(seeded, bh, rows, cols, threshold), p * keep_scale, 0.0)
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new

        empty = l_i == 0.0  # no key was allowed: output 0, L = +inf
        acc = acc / tl.where(empty, 1.0, l_i)[:, None]
        out_base = Out + b * stride_ob + h * stride_oh
        _store_block(out_base, acc, rows, dims, stride_ol, stride_od, tgt_len, HEAD_DIM)
        log_sum_exp = tl.where(empty, float("inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
        tl.store(L + bh * tgt_len + rows, log_sum_exp, mask=rows < tgt_len)

    @triton.jit
    def _backward_dk_dv(
        Q, K, V, dO, L, Delta, dK, dV,
        stride_dkb, stride_dkh, stride_dkl, stride_dkd,
        stride_dvb, stride_dvh, stride_dvl, stride_dvd,
        stride_qb, stride_qh, stride_ql, stride_qd,
        stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd,
        stride_gb, stride_gh, stride_gl, stride_gd,
        Bias, stride_bb, stride_bh, stride_bt, stride_bs,
        heads, tgt_len, src_len, scale, Seed, threshold, keep_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr,
        DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """dK_j and dV_j for one key block j, summed over the query blocks that see it."""
        bh, block = tl.program_id(0), tl.program_id(1)
        seeded = _seed_key(Seed, DROPOUT)  # dropout's hash key
        b, h = (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)  # no int32 overflow
        cols = block * BLOCK_N + tl.arange(0, BLOCK_N)  # key positions s
        dims = tl.arange(0, BLOCK_D)
        q_base = Q + b * stride_qb + h * stride_qh
        grad_out_base = dO + b * stride_gb + h * stride_gh
        bias = Bias + b * stride_bb + h * stride_bh
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        k = _load_block(k_base, cols, dims, stride_kl, stride_kd, src_len, HEAD_DIM)  # K_j
        v = _load_block(v_base, cols, dims, stride_vl, stride_vd, src_len, HEAD_DIM)  # V_j

        grad_k = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        grad_v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        first = (block * BLOCK_N) // BLOCK_M * BLOCK_M if CAUSAL else 0  # rows above see none
        for start in range(first, tgt_len, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)  # query positions t
            q = _load_block(q_base, rows, dims, stride_ql, stride_qd, tgt_len, HEAD_DIM)
            grad_out = _load_block(
                grad_out_base, rows, dims, stride_gl, stride_gd, tgt_len, HEAD_DIM
            )  # dO_i
            log_sum_exp = tl.load(L + bh * tgt_len + rows, mask=rows < tgt_len, other=float("inf"))
            delta = tl.load(Delta + bh * tgt_len + rows, mask=rows < tgt_len, other=0.0)
            applied, grad_s = _block_gradients(
                q, k, v, grad_out, log_sum_exp, delta, bias, stride_bt, stride_bs,
                rows, cols, tgt_len, src_len, scale, seeded, bh, threshold, keep_scale,
                CAUSAL, HAS_BIAS, DROPOUT, PRECISION,
            )  # fmt: skip
            # dV_j += P_ij^T dO_i;  dK_j += dS_ij^T Q_i (times scale, once, below)
            grad_v += tl.dot(
                tl.trans(applied.to(grad_out.dtype)), grad_out, input_precision=PRECISION
            )
            grad_k += tl.dot(tl.trans(grad_s.to(q.dtype)), q, input_precision=PRECISION)
        grad_k_base = dK + b * stride_dkb + h * stride_dkh
        grad_v_base = dV + b * stride_dvb + h * stride_dvh
        _store_block(
            grad_k_base, grad_k * scale, cols, dims, stride_dkl, stride_dkd, src_len, HEAD_DIM
        )
        _store_block(grad_v_base, grad_v, cols, dims, stride_dvl, stride_dvd, src_len, HEAD_DIM)

    @triton.jit
    def _backward_dq(
        Q, K, V, dO, L, Delta, dQ,
        stride_dqb, stride_dqh, stride_dql, stride_dqd,
        stride_qb, stride_qh, stride_ql, stride_qd,
        stride_kb, stride_kh, stride_kl, stride_kd,
        stride_vb, stride_vh, stride_vl, stride_vd,
        stride_gb, stride_gh, stride_gl, stride_gd,
        Bias, stride_bb, stride_bh, stride_bt, stride_bs,
        heads, tgt_len, src_len, scale, Seed, threshold, keep_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr,
        DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """dQ_i for one query block i, summed over the key blocks it sees."""
        bh, block = tl.program_id(0), tl.program_id(1)
        seeded = _seed_key(Seed, DROPOUT)  # dropout's hash key
        b, h = (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)  # no int32 overflow
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # query positions t
        dims = tl.arange(0, BLOCK_D)
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        bias = Bias + b * stride_bb + h * stride_bh
        q = _load_block(
            Q + b * stride_qb + h * stride_qh, rows, dims, stride_ql, stride_qd, tgt_len, HEAD_DIM
        )  # Q_i
        grad_out = _load_block(
            dO + b * stride_gb + h * stride_gh, rows, dims, stride_gl, stride_gd, tgt_len, HEAD_DIM
        )  # dO_i
        log_sum_exp = tl.load(L + bh * tgt_len + rows, mask=rows < tgt_len, other=float("inf"))
        delta = tl.load(Delta + bh * tgt_len + rows, mask=rows < tgt_len, other=0.0)

        grad_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        stop = tl.minimum(src_len, (block + 1) * BLOCK_M) if CAUSAL else src_len
        for start in range(0, stop, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)  # key positions s
            k = _load_block(k_base, cols, dims, stride_kl, stride_kd, src_len, HEAD_DIM)  # K_j
            v = _load_block(v_base, cols, dims, stride_vl, stride_vd, src_len, HEAD_DIM)  # V_j
            _, grad_s = _block_gradients(
                q, k, v, grad_out, log_sum_exp, delta, bias, stride_bt, stride_bs,
                rows, cols, tgt_len, src_len, scale, seeded, bh, threshold, keep_scale,
                CAUSAL, HAS_BIAS, DROPOUT, PRECISION,
            )  # fmt: skip
            grad_q += tl.dot(grad_s.to(k.dtype), k, input_precision=PRECISION)  # dQ_i += dS K_j
        grad_q_base = dQ + b * stride_dqb + h * stride_dqh
        _store_block(
            grad_q_base, grad_q * scale, rows, dims, stride_dql, stride_dqd, tgt_len, HEAD_DIM
        )
