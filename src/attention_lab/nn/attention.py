"""Scaled dot-product attention and multi-head attention, written out by hand.

"An attention function can be described as mapping a query and a set of key-value pairs to an
output ... We compute the matrix of outputs as Attention(Q, K, V) = softmax(QK^T / sqrt(d_k)) V."
(Vaswani et al., 2017, section 3.2)

Shape legend, used in every shape comment of this package:
    B  batch size              T  query (target) length     S  key/value (source) length
    E  model width (d_model)   H  number of heads           D  width of one head (d_head = E / H)

Mask convention, one for the whole project: a boolean attention mask says True = may attend,
as ``torch.nn.functional.scaled_dot_product_attention`` takes it; a float mask is added to the
scores (-inf = may not attend). ``nn.MultiheadAttention`` speaks the opposite for booleans (its
``key_padding_mask`` and ``attn_mask`` say True = ignore); ``MultiHeadAttention`` keeps that
signature so that it stays a drop-in replacement, and ``merge_masks`` is the one place where it is
turned into ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attention_lab.errors import check_choice
from attention_lab.nn.flash import check_blocks, flash_attention

ATTENTION_KINDS = ("scratch", "scratch_fused", "scratch_flash", "scratch_triton", "torch")
# scratch_triton is a Triton kernel: it runs on a CUDA GPU, or slowly in Triton's CPU interpreter
# (TRITON_INTERPRET=1); every other kind runs anywhere.
PORTABLE_KINDS = tuple(kind for kind in ATTENTION_KINDS if kind != "scratch_triton")
KERNELS = ("explicit", "fused", "flash", "triton")  # how MultiHeadAttention computes attention
KERNEL_OF_KIND = {  # the MultiHeadAttention kernel of each of our kinds
    "scratch": "explicit",
    "scratch_fused": "fused",
    "scratch_flash": "flash",
    "scratch_triton": "triton",
}


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d_k) + mask) v, with the attention weights.

    q: (..., T, d_k), k: (..., S, d_k), v: (..., S, d_v); any number of leading dims.
    mask: boolean, True = may attend, broadcastable to (..., T, S); or a float mask that is added
    to the scores (as in ``F.scaled_dot_product_attention``), -inf where a query may not attend.
    A query row that may attend to nothing gets zero weights and a zero output, never NaN.
    Returns (output (..., T, d_v), weights (..., T, S)); the weights are the probabilities before
    dropout.
    """
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T, S)
    if mask is not None:
        # The most negative finite number stands in for -inf: a row with no allowed key then gets
        # a finite (uniform) softmax that we zero below, and its gradient stays finite too.
        lowest = torch.finfo(scores.dtype).min
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, lowest)
            has_key = mask.any(dim=-1, keepdim=True)  # (..., T|1, 1)
        else:
            scores = (scores + mask).clamp_min(lowest)
            has_key = (mask > -math.inf).any(dim=-1, keepdim=True)  # (..., T|1, 1)
    weights = scores.softmax(dim=-1)  # (..., T, S)
    if mask is not None:
        weights = weights * has_key  # rows with no allowed key -> 0
    attended = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
    return attended @ v, weights  # (..., T, d_v), (..., T, S)


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """(length, length) boolean mask in the project convention: position t may attend to <= t."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def merge_masks(
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    *,
    batch_size: int,
    num_heads: int,
    tgt_len: int,
    src_len: int,
    dtype: torch.dtype,
) -> Tensor | None:
    """Turn ``nn.MultiheadAttention``-style masks into one mask of ours: the one place that does.

    key_padding_mask: (B, S); attn_mask: (T, S) or (B*H, T, S). Each is boolean (True = ignore)
    or float (added to the scores). Returns None, or a mask broadcastable to (B, H, T, S):
    boolean (True = may attend) when both are boolean, else float (-inf = may not attend), as
    ``nn.MultiheadAttention`` merges a boolean mask with a float one.
    """
    masks = []
    if key_padding_mask is not None:
        _check_mask(key_padding_mask, "key_padding_mask", (batch_size, src_len), dtype)
        masks.append(key_padding_mask[:, None, None, :])  # (B, 1, 1, S)
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            _check_mask(attn_mask, "attn_mask", (tgt_len, src_len), dtype)
        else:
            shape = (batch_size * num_heads, tgt_len, src_len)
            _check_mask(attn_mask, "attn_mask", shape, dtype)
            attn_mask = attn_mask.view(batch_size, num_heads, tgt_len, src_len)  # (B, H, T, S)
        masks.append(attn_mask)
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        allowed = ~masks[0]
        for mask in masks[1:]:
            allowed = allowed & ~mask
        return allowed  # (B|1, H|1, T, S)
    additive = [
        torch.zeros_like(m, dtype=dtype).masked_fill(m, -math.inf) if m.dtype == torch.bool else m
        for m in masks
    ]
    return additive[0] if len(additive) == 1 else additive[0] + additive[1]  # (B|1, H|1, T, S)


def _check_mask(mask: Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if mask.dtype != torch.bool and mask.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {mask.dtype}; pass a bool mask (True = ignore) or a float mask of "
            f"the query's dtype ({dtype}), added to the scores"
        )
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected {shape}")


def _append_allowed_keys(mask: Tensor | None, count: int) -> Tensor | None:
    """The mask with ``count`` more key columns that every query may attend to."""
    if mask is None:
        return None
    extra = torch.full(
        (*mask.shape[:-1], count), mask.dtype == torch.bool, dtype=mask.dtype, device=mask.device
    )  # True (bool) or 0.0 (float): allowed
    return torch.cat([mask, extra], dim=-1)  # (..., S + count)


def _check_settings(
    embed_dim: int, num_heads: int, kernel: str, block_q: int | None, block_k: int | None
) -> None:
    """``ValueError`` for sizes, a kernel or block sizes that ``MultiHeadAttention`` cannot take."""
    if embed_dim <= 0 or num_heads <= 0:
        raise ValueError(f"embed_dim={embed_dim} and num_heads={num_heads} must be positive")
    if embed_dim % num_heads != 0:
        raise ValueError(
            f"d_model={embed_dim} is not divisible by n_heads={num_heads}: "
            f"each head gets d_model / n_heads features"
        )
    check_choice("kernel", kernel, KERNELS)
    if kernel == "triton":
        from attention_lab.nn import triton_flash

        if problem := triton_flash.available():
            raise ValueError(problem)
        triton_flash.check_triton_blocks(block_q, block_k)
    else:
        check_blocks(block_q, block_k)


class MultiHeadAttention(nn.Module):
    """Multi-head attention by hand, a drop-in for ``nn.MultiheadAttention``.

    "MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O where
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)" (section 3.2.2)

    The constructor takes ``nn.MultiheadAttention``'s arguments in its order, and the parameters
    carry its names, shapes and initialisation (``in_proj_weight``, or ``q/k/v_proj_weight``
    when kdim/vdim differ; ``in_proj_bias``; ``bias_k``/``bias_v`` with ``add_bias_kv``;
    ``out_proj``), so a state_dict loads in either direction and gives the same outputs. The
    forward takes its arguments too: batched (B, T, E) / (T, B, E) or unbatched (T, E) inputs,
    boolean or float masks, ``need_weights``, ``average_attn_weights``, ``is_causal``.

    ``kernel`` picks how the attention itself is computed (the projections and masks are ours in
    every case):
        "explicit"  this module's ``scaled_dot_product_attention``   (model.attention=scratch)
        "fused"     PyTorch's ``F.scaled_dot_product_attention``    (scratch_fused)
        "flash"     our blockwise ``flash.flash_attention``           (scratch_flash)
        "triton"    the same, as our Triton kernel ``triton_flash``      (scratch_triton)
    "fused", "flash" and "triton" never form the weights; when ``need_weights`` asks for them,
    the call takes the explicit path. On the CPU, PyTorch has no fused kernel with dropout:
    "fused" in training with ``dropout > 0`` runs PyTorch's own explicit math, as
    ``nn.MultiheadAttention`` does then too. ``block_q`` and ``block_k`` are the "flash" and
    "triton" kernels' block sizes (rows of queries, of keys); None, each kernel's own default
    (flash: 256; triton: 64 mostly, by head size and dtype; given, powers of two from 16).

    Where it differs from ``nn.MultiheadAttention`` (torch 2.14; the first four are pinned case
    by case in ``tests/test_attention_dropin.py``):
    - ``is_causal=True`` without ``attn_mask`` builds the causal mask; torch raises.
    - Query rows with no allowed key (every key masked) give a zero attention output and finite
      gradients on every kernel here; torch gives NaN for them when it returns weights and in its
      eval fast path, and zeros otherwise.
    - With ``add_bias_kv`` or ``add_zero_attn``, ``is_causal=True`` beside a causal ``attn_mask``
      keeps the appended keys visible, as torch does with ``need_weights=True``; torch's
      ``need_weights=False`` path then drops the mask and hides them.
    - A float mask must have the query's dtype; a boolean and a float mask combine silently
      (torch warns that this is deprecated).
    - Not supported: ``static_k`` / ``static_v`` (only the functional
      ``F.multi_head_attention_forward`` takes them, not the module), and nested-tensor inputs.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        kernel: str = "explicit",
        block_q: int | None = None,
        block_k: int | None = None,
    ) -> None:
        super().__init__()
        _check_settings(embed_dim, num_heads, kernel, block_q, block_k)
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.add_zero_attn = add_zero_attn
        self.kernel = kernel
        self.block_q, self.block_k = block_q, block_k

        # Created in nn.MultiheadAttention's order, so that one seed gives both the same values.
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            # A learned key and value appended to every sequence: one more position to attend to.
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # The same initialisation as nn.MultiheadAttention, so that the two start alike.
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Input projections W^Q, W^K, W^V: one matmul for self-attention, and one for the keys
        and values together when they are the same tensor (cross-attention over a memory)."""
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if self._qkv_same_embed_dim and key is value:
            if query is key:
                return F.linear(query, weight, bias).chunk(3, dim=-1)  # 3 x (B, T, E)
            sizes = [self.embed_dim, 2 * self.embed_dim]
            q_weight, kv_weight = weight.split(sizes)
            q_bias, kv_bias = (None, None) if bias is None else bias.split(sizes)
            k, v = F.linear(key, kv_weight, kv_bias).chunk(2, dim=-1)  # 2 x (B, S, E)
            return F.linear(query, q_weight, q_bias), k, v
        if self._qkv_same_embed_dim:
            weights = weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = (None,) * 3 if bias is None else bias.chunk(3)
        return tuple(
            F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases, strict=True)
        )

    def _blocks(self) -> dict[str, int]:
        """The block sizes given to the constructor, for the flash and triton kernels."""
        return {
            name: size
            for name, size in (("block_q", self.block_q), ("block_k", self.block_k))
            if size is not None
        }

    # ------------------------------------------------------------------ the paper's equations

    def multi_head(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None = None,
        *,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, where
        head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V) (Vaswani et al., 2017, section 3.2.2).

        query (B, T, E), key (B, S, kdim), value (B, S, vdim), batch first; mask (B|1, H|1, T, S)
        in this package's convention (True = may attend, or float added), or None; ``causal``:
        the kernel applies the causal mask itself. Returns (B, T, E) and, with ``need_weights``
        or the explicit kernel, the weights (B, H, T, S).
        """
        q, k, v = self._project(query, key, value)  # (B, T, E), (B, S, E), (B, S, E)
        k, v, mask = self._append_bias_kv(k, v, mask)  # nn.MultiheadAttention's extra key
        q, k, v = (self._split_heads(x) for x in (q, k, v))  # (B, H, ., D)
        k, v, mask = self._append_zero_attn(k, v, mask)  # and its zero key
        out, weights = self._attend(q, k, v, mask, causal=causal, need_weights=need_weights)
        batch, _, tgt_len, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, tgt_len, self.embed_dim)  # concat: (B, T, E)
        return self.out_proj(out), weights  # (B, T, E)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, L, E) -> (B, H, L, D): head i sees features i*D .. (i+1)*D of the projection."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        *,
        causal: bool,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention(Q, K, V) per head with this module's kernel: (B, H, T, D), and the
        weights (B, H, T, S) where the explicit path computed them."""
        dropout_p = self.dropout if self.training else 0.0
        if need_weights or self.kernel == "explicit":
            return scaled_dot_product_attention(q, k, v, mask, dropout_p)
        if self.kernel == "fused":
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal
            )
        elif self.kernel == "triton":
            from attention_lab.nn.triton_flash import triton_flash_attention

            out = triton_flash_attention(
                q, k, v, mask, causal=causal, dropout_p=dropout_p, **self._blocks()
            )
        else:
            out = flash_attention(
                q, k, v, mask, causal=causal, dropout_p=dropout_p, **self._blocks()
            )
        return out, None  # (B, H, T, D)

    # ----------------------------------------------- nn.MultiheadAttention's call, around it

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Same arguments and return value as ``nn.MultiheadAttention.forward``.

        Inputs: (B, T, E) with ``batch_first``, else (T, B, E); or unbatched (T, E).
        Masks take ``nn.MultiheadAttention``'s convention: boolean True = ignore, or float, added
        to the scores; key_padding_mask (B, S) or (S,), attn_mask (T, S) or (B*H, T, S).
        ``is_causal`` is a hint there that ``attn_mask`` holds the causal mask; here it also
        builds that mask when ``attn_mask`` is None, where ``nn.MultiheadAttention`` refuses.
        Returns (output, weights): weights (B, T, S) averaged over heads or (B, H, T, S) per
        head ((T, S) or (H, T, S) unbatched), or None if not ``need_weights``.
        """
        batched = _check_inputs(
            query, key, value, key_padding_mask, (self.embed_dim, self.kdim, self.vdim)
        )
        if not batched:  # one sequence: a batch of one, squeezed again at the end
            query, key, value = (x.unsqueeze(0) for x in (query, key, value))  # (1, ., E)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)  # (1, S)
        elif not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))  # (B, ., E)
        batch, tgt_len, _ = query.shape
        if key.size(0) != batch:
            raise ValueError(f"query holds {batch} sequences but key {key.size(0)}")
        causal = self._kernel_takes_causal(is_causal, need_weights, attn_mask, key_padding_mask)
        if is_causal and attn_mask is None and not causal:
            attn_mask = ~causal_mask(tgt_len, device=query.device)  # (T, T), True = ignore
        mask = merge_masks(
            key_padding_mask,
            attn_mask,
            batch_size=batch,
            num_heads=self.num_heads,
            tgt_len=tgt_len,
            src_len=key.size(1),
            dtype=query.dtype,
        )  # (B|1, H|1, T, S), bool (True = may attend) or float, or None
        out, weights = self.multi_head(
            query, key, value, mask, causal=causal, need_weights=need_weights
        )  # (B, T, E), (B, H, T, S) or None
        if not batched:
            out = out.squeeze(0)  # (T, E)
        elif not self.batch_first:
            out = out.transpose(0, 1)  # (T, B, E)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)  # (B, T, S)
        return out, weights if batched else weights.squeeze(0)

    def _kernel_takes_causal(
        self,
        is_causal: bool,
        need_weights: bool,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
    ) -> bool:
        """Whether the kernel applies causality as a flag (skipping the blocks it hides) rather
        than being given the mask. The flash and Triton kernels take the flag; PyTorch's only
        without any other mask. Extra keys (bias_kv, zero_attn) are appended after the source
        positions and stay visible to all queries, so they need the mask."""
        return (
            is_causal
            and not need_weights
            and self.bias_k is None
            and not self.add_zero_attn
            and (
                self.kernel in ("flash", "triton")
                or (self.kernel == "fused" and attn_mask is None and key_padding_mask is None)
            )
        )

    def _append_bias_kv(
        self, k: Tensor, v: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """With ``add_bias_kv``, as nn.MultiheadAttention: one more learned key and value,
        (B, S+1, E), visible to every query."""
        if self.bias_k is None:
            return k, v, mask
        batch = k.size(0)
        k = torch.cat([k, self.bias_k.expand(batch, 1, -1)], dim=1)  # (B, S+1, E)
        v = torch.cat([v, self.bias_v.expand(batch, 1, -1)], dim=1)  # (B, S+1, E)
        return k, v, _append_allowed_keys(mask, 1)

    def _append_zero_attn(
        self, k: Tensor, v: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """With ``add_zero_attn``, as nn.MultiheadAttention: one more all-zero key and value
        per head, (B, H, S+1, D), visible to every query."""
        if not self.add_zero_attn:
            return k, v, mask
        zeros = k.new_zeros(k.size(0), self.num_heads, 1, self.head_dim)  # (B, H, 1, D)
        k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)  # (B, H, S+1, D)
        return k, v, _append_allowed_keys(mask, 1)  # (B|1, H|1, T, S+1)


def _check_inputs(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None,
    widths: tuple[int, int, int],
) -> bool:
    """Whether the inputs are batched; a clear error for shapes nn.MultiheadAttention refuses."""
    if query.dim() not in (2, 3):
        raise ValueError(
            f"query has {query.dim()} dims; expected (B, T, E) / (T, B, E), or (T, E) unbatched"
        )
    if key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(
            f"query has {query.dim()} dims but key {key.dim()} and value {value.dim()}: "
            f"all three must be batched (3 dims) or all unbatched (2 dims)"
        )
    for name, tensor, width in zip(
        ("query", "key", "value"), (query, key, value), widths, strict=True
    ):
        if tensor.size(-1) != width:
            raise ValueError(
                f"{name} has width {tensor.size(-1)}; this module takes {width} "
                f"(embed_dim, kdim and vdim set the widths of query, key and value)"
            )
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(
            f"key {tuple(key.shape)} and value {tuple(value.shape)} must agree in all but the "
            f"last dim (one value per key)"
        )
    if key_padding_mask is not None and key_padding_mask.dim() != query.dim() - 1:
        raise ValueError(
            f"key_padding_mask has shape {tuple(key_padding_mask.shape)}; expected (B, S) for "
            f"batched inputs and (S,) for unbatched ones"
        )
    return query.dim() == 3


def build_attention(
    kind: str, *, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True
) -> nn.Module:
    """The attention switch, the one place that reads ``model.attention``.

    ``scratch``: this module's explicit math; ``scratch_fused``: the same module with PyTorch's
    fused kernel when weights are not needed; ``scratch_flash``: the same module with our
    hand-written FlashAttention (``flash.py``) when weights are not needed; ``scratch_triton``:
    the same with our Triton kernel (``triton_flash.py``; a CUDA GPU); ``torch``:
    ``nn.MultiheadAttention``. All are built batch-first with the same parameters, so any can
    replace another.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(
            f"attention={kind!r} is not a known attention kind; choose one of "
            f"{', '.join(ATTENTION_KINDS)}"
        )
    if d_model % n_heads != 0:
        raise ValueError(
            f"d_model={d_model} is not divisible by n_heads={n_heads}: "
            f"each head gets d_model / n_heads features"
        )
    if kind == "torch":
        return nn.MultiheadAttention(d_model, n_heads, dropout=dropout, bias=bias, batch_first=True)
    return MultiHeadAttention(
        d_model, n_heads, dropout=dropout, bias=bias, batch_first=True, kernel=KERNEL_OF_KIND[kind]
    )
