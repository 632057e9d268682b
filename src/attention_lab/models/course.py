"""The course notebooks' own models, as the notebooks wrote them, with every quirk a named flag.

The course's notebooks (kept beside the repository, not in it) are the ones this project grew
from. Two of them report MNIST accuracies that the README reproduces:

- ``000_*`` (assignment 11.1), 95.07%: ``CourseEncoderClassifier``;
- ``003_*`` (lab 11, the course-lab ViT), 91.45%: ``CourseViT``.

Each quirk of a notebook is a constructor flag whose default is the notebook's choice and whose
docstring quotes the line it reproduces; turning one flag off gives the clean choice for that
one thing and changes nothing else, so an ablation can measure what each quirk costs. The
notebooks' per-sample Python loops are vectorised; the mathematics is unchanged. Modules are
created in the notebooks' order and draw from the random generator in that order, so with the
same ``torch.manual_seed`` a faithful model starts from exactly the notebook's weights.

The attention switch (``attention``, the config's ``model.attention``) applies to both models:
it is passed to ``build_attention`` and nothing here depends on the kind. The course ViT's
per-head slice projections (one ``Linear(d_head, d_head)`` per head, applied to that head's
slice of the token) are exactly a block-diagonal ``in_proj_weight``, so every kind that has
``nn.MultiheadAttention``'s parameters computes them; a kind without that layout is refused
with a ``ConfigError``.

Below the models are small course-compatible modules of the exercise notebook (``001_*``) and
the assignment's first encoder block, built on our ``scaled_dot_product_attention``, creating
their parameters in the notebooks' order so that their printed values can be checked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.nn.utils import parametrize

from attention_lab.errors import ConfigError, check_positive
from attention_lab.nn.attention import build_attention, scaled_dot_product_attention
from attention_lab.nn.blocks import Encoder, EncoderSpec, FeedForward
from attention_lab.nn.positional import sinusoidal_encoding


class CourseEncoderClassifier(nn.Module):
    """The assignment notebook's classifier (``000_*``, 95.07%): the image as one token, three
    post-norm encoder blocks (``nn.MultiheadAttention``, ReLU feed-forward), a mean over the
    sequence and a linear head.

    With one token per image, softmax over a single key is 1: attention returns the value
    projection of its input whichever kind computes it, so ``attention`` cannot change the
    function, only the floating-point rounding.

    Flags (the notebook's choice by default):

    - ``crop_to_d_model``: ``images = torch.nn.functional.pad(images, (0, d_model -
      images.size(1)), "constant", 0)  # Pad to d_model``. With ``d_model=512`` the pad is
      negative, so the token is the first 512 of the 784 pixels (18 rows and 8 pixels), with no
      embedding layer. False: a linear embedding of all 784 pixels to ``d_model``.
    - ``dropout_at_test``: the notebook never calls ``model.eval()``, so ``with torch.no_grad():
      ... outputs = model(images)`` tests with dropout (0.1) still on. True keeps every dropout
      (the attention's included) active after ``.eval()``; False: the usual deterministic test.
    """

    def __init__(
        self,
        *,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        d_model: int = 512,
        n_heads: int = 8,
        n_layers: int = 3,
        d_ff: int = 2048,
        dropout: float = 0.1,
        crop_to_d_model: bool = True,
        dropout_at_test: bool = True,
        attention: str = "torch",
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, num_classes=num_classes, d_ff=d_ff)
        self.n_pixels = in_channels * image_size * image_size
        self.d_model = d_model
        self.crop_to_d_model = crop_to_d_model
        self.dropout_at_test = dropout_at_test
        # The notebook builds the blocks, then the head; the embedding (clean variant) has no
        # place in its order, so it comes first and the faithful model draws nothing for it.
        self.to_embedding = None if crop_to_d_model else nn.Linear(self.n_pixels, d_model)
        spec = EncoderSpec(
            n_layers=n_layers,
            d_model=d_model,
            n_heads=n_heads,
            d_ff=d_ff,
            dropout=dropout,
            activation="relu",
            norm_first=False,  # "src = src + self.dropout1(src2); src = self.norm1(src)"
            attention=attention,
        )
        self.encoder = Encoder(spec)
        self.head = nn.Linear(d_model, num_classes)

    def train(self, mode: bool = True) -> CourseEncoderClassifier:
        """As ``nn.Module.train``; with ``dropout_at_test`` the submodules stay in training mode
        (only dropout depends on it here), so ``.eval()`` leaves dropout on, as the notebook."""
        super().train(mode)
        if self.dropout_at_test and not mode:
            for child in self.children():
                child.train(True)
        return self

    def image_to_token(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1, E): the one token the encoder sees."""
        pixels = images.reshape(images.size(0), -1)  # (B, C*H*W)
        if self.crop_to_d_model:
            # A negative pad crops: the first d_model pixels when d_model < C*H*W.
            token = F.pad(pixels, (0, self.d_model - self.n_pixels), "constant", 0)  # (B, E)
        else:
            token = self.to_embedding(pixels)  # (B, E)
        return token[:, None, :]  # (B, 1, E)

    def token_labels(self) -> list[str]:
        """One token: the (cropped or embedded) image."""
        return ["image"]

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W) -> logits (B, num_classes)."""
        x = self.encoder(self.image_to_token(images))  # (B, 1, E)
        return self.head(x.mean(dim=1))  # (B, num_classes)


class _BlockDiagonal(nn.Module):
    """Parametrisation that keeps only the diagonal (d_head x d_head) blocks of each of the
    q, k and v parts of an ``in_proj_weight`` (3E, E): per-head slice projections."""

    def __init__(self, *, d_model: int, n_heads: int) -> None:
        super().__init__()
        d_head = d_model // n_heads
        block = torch.block_diag(*[torch.ones(d_head, d_head)] * n_heads)  # (E, E)
        self.register_buffer("mask", block.repeat(3, 1))  # (3E, E)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


class CourseViTBlock(nn.Module):
    """The course-lab ViT's encoder: ``out = tokens + self.msa(self.ln1(tokens))``, then
    ``out = out + self.enc_mlp(self.ln2(out))``. Attention runs through ``build_attention``;
    the notebook's head projections are written into its ``in_proj_weight`` (see
    ``CourseViT``). ``keep_attention`` as in ``nn.blocks.EncoderBlock``."""

    attention_weight_names = ("attention_weights",)

    def __init__(
        self,
        *,
        n_tokens: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        attention: str,
        sequence_layernorm: bool,
        per_head_slice_projections: bool,
        frozen_head_projections: bool,
        skip_output_projection: bool,
        single_linear_mlp: bool,
    ) -> None:
        super().__init__()
        norm_shape = (n_tokens, d_model) if sequence_layernorm else (d_model,)
        self.norm1 = nn.LayerNorm(norm_shape)
        # The attention module draws nothing from the generator: the notebook's head
        # projections below are drawn in its own order and copied in.
        with torch.random.fork_rng(devices=[]):
            self.self_attn = build_attention(attention, d_model=d_model, n_heads=n_heads)
        if getattr(self.self_attn, "in_proj_weight", None) is None:
            raise ConfigError(
                f"model.attention={attention!r} has no in_proj_weight (3E, E) to hold the course "
                f"ViT's head projections; choose a kind with nn.MultiheadAttention's parameters"
            )
        if per_head_slice_projections:
            self._load_head_projections(d_model, n_heads)
        if frozen_head_projections:
            self.self_attn.in_proj_weight.requires_grad_(False)
            self.self_attn.in_proj_bias.requires_grad_(False)
        elif per_head_slice_projections:
            # Trained, yet still one (d_head x d_head) map per head: off-diagonal blocks are
            # masked out of the forward pass, so they get no gradient and have no effect.
            parametrize.register_parametrization(
                self.self_attn, "in_proj_weight", _BlockDiagonal(d_model=d_model, n_heads=n_heads)
            )
        if skip_output_projection:  # W^O = identity, never trained: the notebook has none
            with torch.no_grad():
                self.self_attn.out_proj.weight.copy_(torch.eye(d_model))
                self.self_attn.out_proj.bias.zero_()
            self.self_attn.out_proj.requires_grad_(False)
        self.norm2 = nn.LayerNorm(norm_shape)
        if single_linear_mlp:
            self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU())
        else:
            self.mlp = FeedForward(d_model=d_model, d_ff=d_ff, activation="relu")
        self.keep_attention = False
        self.attention_weights: Tensor | None = None

    def _load_head_projections(self, d_model: int, n_heads: int) -> None:
        """``self.q_mappings = [nn.Linear(d_head, d_head) for _ in range(self.n_heads)]``, then
        the k and v mappings alike: drawn in that order, placed on the diagonal blocks."""
        d_head = d_model // n_heads
        weights, biases = [], []
        for _ in "qkv":
            heads = [nn.Linear(d_head, d_head) for _ in range(n_heads)]
            weights.append(torch.block_diag(*[h.weight.detach() for h in heads]))  # (E, E)
            biases.append(torch.cat([h.bias.detach() for h in heads]))  # (E,)
        with torch.no_grad():
            self.self_attn.in_proj_weight.copy_(torch.cat(weights))  # (3E, E)
            self.self_attn.in_proj_bias.copy_(torch.cat(biases))  # (3E,)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, E) -> (B, T, E)."""
        normed = self.norm1(x)
        attended, weights = self.self_attn(
            normed,
            normed,
            normed,
            need_weights=self.keep_attention,
            average_attn_weights=False,
        )  # (B, T, E), (B, H, T, T) or None
        if self.keep_attention:
            self.attention_weights = weights.detach()
        x = x + attended
        return x + self.mlp(self.norm2(x))


class CourseViT(nn.Module):
    """The course-lab ViT (``003_*``, 91.45%): 49 patch tokens and a class token of width 20,
    sinusoidal positions, one encoder block with 2 heads, and a head on the class token.

    Flags (the notebook's choice by default):

    - ``row_strip_patches``: ``patches = images.reshape(n, self.n_patches ** 2, self.input_d)``
      makes each "patch" 16 consecutive pixels in reading order, a strip that often runs on into
      the next row, not a 4x4 square. False: 4x4 squares.
    - ``uniform_class_token``: ``self.class_token = nn.Parameter(torch.rand(1, self.hidden_d))``,
      uniform in [0, 1). False: ``randn * 0.02``, as our ``VisionTransformer``.
    - ``sequence_layernorm``: ``nn.LayerNorm((self.n_patches ** 2 + 1, self.hidden_d))``
      normalises over the whole (50, d) sequence, with a (50, d) affine. False: per token.
    - ``per_head_slice_projections``: ``seq = sequence[:, head * self.d_head: (head + 1) *
      self.d_head]; q, k, v = q_mapping(seq), k_mapping(seq), v_mapping(seq)`` with one
      ``nn.Linear(d_head, d_head)`` per head: a head sees only its slice of the token. False:
      the usual (E, E) projections, every head seeing the whole token.
    - ``frozen_head_projections``: ``self.q_mappings = [nn.Linear(d_head, d_head) for _ in
      range(self.n_heads)]`` (and k, v) are plain lists, never registered, so ``Adam(
      model.parameters())`` never updates them: they stay at their random initialisation.
      True: ``requires_grad=False``. (Unlike the notebook's lists, they are saved in the
      state_dict, so a checkpoint restores the same model.) False: trained.
    - ``skip_output_projection``: ``result.append(torch.hstack(seq_result))``: the heads are
      concatenated and returned with no output projection W^O. False: a trained W^O.
    - ``single_linear_mlp``: ``self.enc_mlp = nn.Sequential(nn.Linear(self.hidden_d,
      self.hidden_d), nn.ReLU())``. False: ``FeedForward(d_model, d_ff)``, two layers.
    - ``softmax_before_loss``: ``self.mlp = nn.Sequential(nn.Linear(self.hidden_d, out_d),
      nn.Softmax(dim=-1))``: the model returns probabilities, and ``CrossEntropyLoss`` treats
      them as logits. False: the head returns logits.

    The notebook's forward also runs ``self.msa(self.ln1(tokens.to("cpu")).to(device))`` and
    discards the result; it draws no random numbers and changes nothing, so it is left out.
    """

    def __init__(
        self,
        *,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        n_patches: int = 7,
        d_model: int = 20,
        n_heads: int = 2,
        d_ff: int = 80,
        row_strip_patches: bool = True,
        uniform_class_token: bool = True,
        sequence_layernorm: bool = True,
        per_head_slice_projections: bool = True,
        frozen_head_projections: bool = True,
        skip_output_projection: bool = True,
        single_linear_mlp: bool = True,
        softmax_before_loss: bool = True,
        attention: str = "scratch",
    ) -> None:
        super().__init__()
        if n_patches <= 0 or image_size % n_patches != 0:
            raise ValueError(
                f"n_patches={n_patches} does not divide image_size={image_size}; the notebook "
                f"asserts 'Input shape not entirely divisible by number of patches'"
            )
        if d_model <= 0 or n_heads <= 0 or d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}: "
                f"each head gets d_model / n_heads features"
            )
        self.image_size = image_size
        self.n_patches = n_patches
        self.patch_size = image_size // n_patches
        self.row_strip_patches = row_strip_patches
        self.softmax_before_loss = softmax_before_loss
        n_tokens = n_patches**2 + 1
        patch_dim = in_channels * self.patch_size**2

        # The notebook's order: linear mapper, class token, ln1, MSA, ln2, encoder MLP, head.
        self.to_patch_embedding = nn.Linear(patch_dim, d_model)
        if uniform_class_token:
            self.cls_token = nn.Parameter(torch.rand(1, 1, d_model))
        else:
            self.cls_token = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.block = CourseViTBlock(
            n_tokens=n_tokens,
            d_model=d_model,
            n_heads=n_heads,
            d_ff=d_ff,
            attention=attention,
            sequence_layernorm=sequence_layernorm,
            per_head_slice_projections=per_head_slice_projections,
            frozen_head_projections=frozen_head_projections,
            skip_output_projection=skip_output_projection,
            single_linear_mlp=single_linear_mlp,
        )
        self.mlp_head = nn.Linear(d_model, num_classes)
        self.register_buffer("positions", sinusoidal_encoding(n_tokens, d_model), persistent=False)

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        """(rows, columns) of square patches; None for row strips, which tile no grid."""
        return None if self.row_strip_patches else (self.n_patches, self.n_patches)

    def token_labels(self) -> list[str]:
        """'cls', then each strip's index or each square patch's (row, column)."""
        count = self.n_patches**2
        if self.row_strip_patches:
            return ["cls"] + [f"strip {i}" for i in range(count)]
        return ["cls"] + [f"({i // self.n_patches},{i % self.n_patches})" for i in range(count)]

    def image_to_patches(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, P): N = n_patches**2 patches of P pixel values."""
        if self.row_strip_patches:
            return images.reshape(images.size(0), self.n_patches**2, -1)  # (B, N, P)
        p = self.patch_size
        return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W) -> (B, num_classes): probabilities with
        ``softmax_before_loss``, else logits."""
        tokens = self.to_patch_embedding(self.image_to_patches(images))  # (B, N, E)
        cls = self.cls_token.expand(tokens.size(0), -1, -1)  # (B, 1, E)
        tokens = torch.cat([cls, tokens], dim=1) + self.positions  # (B, 1+N, E)
        out = self.block(tokens)[:, 0]  # (B, E): the class token
        logits = self.mlp_head(out)  # (B, num_classes)
        return logits.softmax(dim=-1) if self.softmax_before_loss else logits


# --- The exercise notebook's modules (001_*), around our attention function -------------------


class SelfAttention(nn.Module):
    """The exercise's ``SelfAttention(input_dim, key_dim, output_dim)``: ``linear_q``,
    ``linear_k``, ``linear_v`` (created in that order), then ``attention(q, k, v)``."""

    def __init__(self, input_dim: int, key_dim: int, output_dim: int) -> None:
        super().__init__()
        self.linear_q = nn.Linear(input_dim, key_dim)
        self.linear_k = nn.Linear(input_dim, key_dim)
        self.linear_v = nn.Linear(input_dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, L, D_in) -> (N, L, D_out)."""
        out, _ = scaled_dot_product_attention(self.linear_q(x), self.linear_k(x), self.linear_v(x))
        return out


class CrossAttention(nn.Module):
    """The exercise's ``CrossAttention(x_input_dim, y_input_dim, key_dim, output_dim)``: queries
    from ``x``, keys and values from ``y``."""

    def __init__(self, x_input_dim: int, y_input_dim: int, key_dim: int, output_dim: int) -> None:
        super().__init__()
        self.linear_q = nn.Linear(x_input_dim, key_dim)
        self.linear_k = nn.Linear(y_input_dim, key_dim)
        self.linear_v = nn.Linear(y_input_dim, output_dim)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x: (N, T, D_x), y: (N, S, D_y) -> (N, T, D_out)."""
        out, _ = scaled_dot_product_attention(self.linear_q(x), self.linear_k(y), self.linear_v(y))
        return out


class MultiHeadedAttention(nn.Module):
    """The exercise's ``MultiHeadedAttention(attn_modules, final_output_dim)``: run each given
    head on the input, concatenate, and apply one linear layer (created after the heads)."""

    def __init__(self, attn_modules: list[nn.Module], final_output_dim: int) -> None:
        super().__init__()
        self.module_list = nn.ModuleList(attn_modules)
        concat_dim = sum(module.linear_v.out_features for module in self.module_list)
        self.linear = nn.Linear(concat_dim, final_output_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, L, D_in) -> (N, L, final_output_dim)."""
        heads = torch.cat([module(x) for module in self.module_list], dim=-1)  # (N, L, sum D_v)
        return self.linear(heads)


class PositionalEncoder(nn.Module):
    """The exercise's ``PositionalEncoder(d_model, max_seq_len=80)``: ``x * sqrt(d_model)`` plus
    the paper's sinusoids (our ``sinusoidal_encoding``)."""

    def __init__(self, d_model: int, max_seq_len: int = 80) -> None:
        super().__init__()
        self.d_model = d_model
        self.register_buffer("pe", sinusoidal_encoding(max_seq_len, d_model)[None])  # (1, L, E)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, L, E) -> (N, L, E)."""
        return x * math.sqrt(self.d_model) + self.pe[:, : x.size(1)]


class AssignmentEncoderBlock(nn.Module):
    """The assignment's own first block (``000_*``, task 11.1.1): single-head self-attention with
    ``torch.randn`` matrices ``W_q, W_k, W_v, W_o, W1, W2`` (in that order) and no LayerNorm,
    although the comments say "Add & Norm"; ``n_head`` is stored and unused. Inputs are
    ``(seq, batch, d)`` but the matrix products treat the first axis as a batch, so attention
    mixes the second axis."""

    def __init__(self, d_model: int, n_head: int, dim_feedforward: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.n_head = n_head
        self.W_q = nn.Parameter(torch.randn(d_model, d_model))
        self.W_k = nn.Parameter(torch.randn(d_model, d_model))
        self.W_v = nn.Parameter(torch.randn(d_model, d_model))
        self.W_o = nn.Parameter(torch.randn(d_model, d_model))
        self.W1 = nn.Parameter(torch.randn(d_model, dim_feedforward))
        self.W2 = nn.Parameter(torch.randn(dim_feedforward, d_model))

    def forward(self, src: Tensor) -> Tensor:
        """src: (A, L, d) -> (A, L, d); attention over L within each index of A."""
        attended, _ = scaled_dot_product_attention(
            src @ self.W_q, src @ self.W_k, src @ self.W_v
        )  # (A, L, d)
        src = src + attended @ self.W_o
        return src + torch.relu(src @ self.W1) @ self.W2
