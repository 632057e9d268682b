"""Scaled dot-product attention and multi-head attention, written out by hand.

"An attention function can be described as mapping a query and a set of key-value pairs to an
output ... We compute the matrix of outputs as Attention(Q, K, V) = softmax(QK^T / sqrt(d_k)) V."
(Vaswani et al., 2017, section 3.2)

Shape legend, used in every shape comment of this package:
    B  batch size              T  query (target) length     S  key/value (source) length
    E  model width (d_model)   H  number of heads           D  width of one head (d_head = E / H)

Mask convention, one for the whole project: a boolean attention mask says True = may attend,
as ``torch.nn.functional.scaled_dot_product_attention`` takes it. ``nn.MultiheadAttention``
speaks the opposite (its boolean ``key_padding_mask`` and ``attn_mask`` say True = ignore);
``MultiHeadAttention`` keeps that signature so that it stays a drop-in replacement, and
``merge_masks`` is the one place where it is turned into ours.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_KINDS = ("scratch", "scratch_fused", "torch")


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d_k)) v, with the attention weights.

    q: (..., T, d_k), k: (..., S, d_k), v: (..., S, d_v); any number of leading dims.
    mask: boolean, True = may attend, broadcastable to (..., T, S); or a float mask that is added
    to the scores (as in ``F.scaled_dot_product_attention``).
    A query row that may attend to nothing gets zero weights and a zero output, never NaN.
    Returns (output (..., T, d_v), weights (..., T, S)); the weights are the probabilities before
    dropout.
    """
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T, S)
    if mask is not None and mask.dtype == torch.bool:
        # The most negative finite number rather than -inf: a row with no allowed key then gets
        # a finite (uniform) softmax that we zero below, and its gradient stays finite too.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1)  # (..., T, S)
    if mask is not None and mask.dtype == torch.bool:
        weights = weights * mask.any(dim=-1, keepdim=True)  # fully masked rows -> 0
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
) -> Tensor | None:
    """Turn ``nn.MultiheadAttention``-style masks (True = ignore) into one mask of ours.

    key_padding_mask: (B, S), True = padding. attn_mask: (T, S) or (B*H, T, S), True = ignore.
    Returns a boolean mask, True = may attend, broadcastable to (B, H, T, S), or None.
    """
    allowed = None
    if key_padding_mask is not None:
        _require_bool(key_padding_mask, "key_padding_mask")
        allowed = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
    if attn_mask is not None:
        _require_bool(attn_mask, "attn_mask")
        if attn_mask.dim() == 3:
            attn_mask = attn_mask.view(batch_size, num_heads, *attn_mask.shape[-2:])  # (B, H, T, S)
        allowed_by_attn = ~attn_mask  # (T, S) or (B, H, T, S)
        allowed = allowed_by_attn if allowed is None else allowed & allowed_by_attn
    return allowed


def _require_bool(mask: Tensor, name: str) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(
            f"MultiHeadAttention takes boolean masks; {name} has dtype {mask.dtype}. "
            f"Pass a bool tensor (True = ignore, as nn.MultiheadAttention)."
        )


class MultiHeadAttention(nn.Module):
    """Multi-head attention by hand, a drop-in for ``nn.MultiheadAttention``.

    "MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O where
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)" (section 3.2.2)

    Parameters carry ``nn.MultiheadAttention``'s names, shapes and initialisation
    (``in_proj_weight`` or ``q/k/v_proj_weight`` when kdim/vdim differ, ``in_proj_bias``,
    ``out_proj``), so a state_dict loads in either direction and gives the same outputs.

    ``fused=True`` is the named fast path (``model.attention=scratch_fused``): the same
    projections and masks, but when no weights are asked for, the attention itself runs in
    PyTorch's fused ``F.scaled_dot_product_attention`` kernel. A query row with no allowed key
    gives NaN there instead of zeros; padding masks never produce one. On the CPU, PyTorch has
    no fused kernel with dropout: with ``dropout_p > 0`` (training) it runs its own explicit
    math instead, as ``nn.MultiheadAttention`` does then too.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        fused: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim={embed_dim} and num_heads={num_heads} must be positive")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"d_model={embed_dim} is not divisible by n_heads={num_heads}: "
                f"each head gets d_model / n_heads features"
            )
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.fused = fused

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

        Masks take ``nn.MultiheadAttention``'s convention (boolean, True = ignore).
        ``is_causal`` is only a hint there, so ``attn_mask`` must hold the causal mask; here a
        causal mask is built when ``attn_mask`` is None. Returns (output, weights) with weights
        (B, T, S) averaged over heads or (B, H, T, S) per head, or None if not ``need_weights``.
        """
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))  # (B, ., E)
        batch, tgt_len, _ = query.shape
        src_len = key.size(1)

        if is_causal and attn_mask is None:
            attn_mask = ~causal_mask(tgt_len, device=query.device)  # (T, T), True = ignore
        mask = merge_masks(
            key_padding_mask, attn_mask, batch_size=batch, num_heads=self.num_heads
        )  # (B|1, H|1, T, S) or None

        q, k, v = self._project(query, key, value)  # (B, T, E), (B, S, E), (B, S, E)
        q = q.view(batch, tgt_len, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(batch, src_len, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        v = v.view(batch, src_len, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, S, D)

        dropout_p = self.dropout if self.training else 0.0
        if self.fused and not need_weights:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p
            )  # (B, H, T, D)
            weights = None  # the kernel never forms them
        else:
            out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(batch, tgt_len, self.embed_dim)  # (B, T, E)
        out = self.out_proj(out)  # (B, T, E)

        if not self.batch_first:
            out = out.transpose(0, 1)  # (T, B, E)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def build_attention(
    kind: str, *, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True
) -> nn.Module:
    """The attention switch, the one place that reads ``model.attention``.

    ``scratch``: this module's explicit math; ``scratch_fused``: the same module with the fused
    kernel when weights are not needed; ``torch``: ``nn.MultiheadAttention``. All are built
    batch-first with the same parameters, so any can replace another.
    """
    if kind == "scratch":
        cls = MultiHeadAttention
    elif kind == "scratch_fused":
        cls = partial(MultiHeadAttention, fused=True)
    elif kind == "torch":
        cls = nn.MultiheadAttention
    else:
        raise ValueError(
            f"attention={kind!r} is not a known attention kind; choose one of "
            f"{', '.join(ATTENTION_KINDS)}"
        )
    if d_model % n_heads != 0:
        raise ValueError(
            f"d_model={d_model} is not divisible by n_heads={n_heads}: "
            f"each head gets d_model / n_heads features"
        )
    return cls(d_model, n_heads, dropout=dropout, bias=bias, batch_first=True)
