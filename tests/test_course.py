"""The course notebooks' models (models/course.py): each quirk computes what the notebook computes,
each flag changes only what it names, and the exercise modules print the notebook's numbers.

Facts and printed values are taken from the notebooks in ../shared/course (000_*: assignment
11.1; 001_*: the exercise; 003_*: lab 11, the course-lab ViT).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attention_lab.errors import ConfigError
from attention_lab.models.course import (
    AssignmentEncoderBlock,
    CourseEncoderClassifier,
    CourseViT,
    CrossAttention,
    MultiHeadedAttention,
    PositionalEncoder,
    SelfAttention,
)
from attention_lab.nn.attention import ATTENTION_KINDS, scaled_dot_product_attention
from attention_lab.run.training import train
from tests.conftest import ComposeFn

SMALL_ENCODER = {"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64}
VIT_FLAGS = (
    "row_strip_patches",
    "uniform_class_token",
    "sequence_layernorm",
    "per_head_slice_projections",
    "frozen_head_projections",
    "skip_output_projection",
    "single_linear_mlp",
    "softmax_before_loss",
)


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# --- The assignment's encoder classifier (000_*) ----------------------------------------------


def test_cropped_token_is_exactly_the_first_512_pixels() -> None:
    model = CourseEncoderClassifier(d_model=512, n_heads=8, n_layers=1, d_ff=16)
    images = _images()
    token = model.image_to_token(images)
    assert token.shape == (4, 1, 512)
    torch.testing.assert_close(token[:, 0], images.reshape(4, -1)[:, :512], rtol=0, atol=0)
    # 512 = 18 rows of 28 and 8 pixels of row 18: the bottom of the digit is never seen.
    torch.testing.assert_close(token[:, 0, 504:], images[:, 0, 18, :8], rtol=0, atol=0)
    later = images.clone()
    later[:, :, 18, 8:] = later[:, :, 19:] = 0.5
    torch.testing.assert_close(model.image_to_token(later), token, rtol=0, atol=0)
    assert model.to_embedding is None


def test_without_the_crop_every_pixel_is_embedded() -> None:
    model = CourseEncoderClassifier(**SMALL_ENCODER, crop_to_d_model=False)
    assert isinstance(model.to_embedding, nn.Linear)
    assert model.to_embedding.in_features == 784
    images = _images()
    changed = images.clone()
    changed[:, :, 27, 27] += 1.0  # the last pixel, far beyond the crop
    assert not torch.allclose(model.image_to_token(images), model.image_to_token(changed))


def test_a_d_model_above_784_pads_with_zeros() -> None:
    model = CourseEncoderClassifier(d_model=800, n_heads=8, n_layers=1, d_ff=16)
    token = model.image_to_token(_images(2))
    assert token.shape == (2, 1, 800) and torch.all(token[..., 784:] == 0)


@pytest.mark.parametrize("dropout_at_test", [True, False])
def test_dropout_stays_on_at_test_only_with_the_flag(dropout_at_test: bool) -> None:
    torch.manual_seed(0)
    model = CourseEncoderClassifier(**SMALL_ENCODER, dropout=0.5, dropout_at_test=dropout_at_test)
    model.eval()
    assert not model.training  # the model reports what it was asked for
    images = _images()
    with torch.no_grad():
        first, second = model(images), model(images)
    assert torch.equal(first, second) is not dropout_at_test
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(m.training is dropout_at_test for m in dropouts)
    model.train()
    assert all(m.training for m in model.modules())


def test_test_time_dropout_changes_nothing_in_training() -> None:
    torch.manual_seed(0)
    on = CourseEncoderClassifier(**SMALL_ENCODER, dropout_at_test=True)
    off = CourseEncoderClassifier(**SMALL_ENCODER, dropout_at_test=False)
    off.load_state_dict(on.state_dict())
    images = _images()
    torch.manual_seed(1)
    with_flag = on(images)
    torch.manual_seed(1)
    torch.testing.assert_close(off(images), with_flag, rtol=0, atol=0)


@pytest.mark.parametrize("kind", [k for k in ATTENTION_KINDS if k != "scratch"])
def test_with_one_token_every_attention_kind_computes_the_same_function(kind: str) -> None:
    torch.manual_seed(0)
    scratch = CourseEncoderClassifier(**SMALL_ENCODER, attention="scratch", dropout_at_test=False)
    other = CourseEncoderClassifier(**SMALL_ENCODER, attention=kind, dropout_at_test=False)
    other.load_state_dict(scratch.state_dict())
    images = _images()
    torch.testing.assert_close(other.eval()(images), scratch.eval()(images), atol=1e-5, rtol=0)


def test_encoder_weights_are_drawn_in_the_notebooks_order() -> None:
    # The notebook builds, per block, nn.MultiheadAttention, linear1 and linear2 (LayerNorms and
    # dropouts draw nothing), then the head: the same seed gives the same weights.
    d, h, d_ff = SMALL_ENCODER["d_model"], SMALL_ENCODER["n_heads"], SMALL_ENCODER["d_ff"]
    torch.manual_seed(7)
    reference = []
    for _ in range(SMALL_ENCODER["n_layers"]):
        attention = nn.MultiheadAttention(d, h, dropout=0.1)
        reference += [attention.in_proj_weight, attention.out_proj.weight]
        reference += [nn.Linear(d, d_ff).weight, nn.Linear(d_ff, d).weight]
    reference.append(nn.Linear(d, 10).weight)
    torch.manual_seed(7)
    model = CourseEncoderClassifier(**SMALL_ENCODER)
    ours = []
    for block in model.encoder.blocks:
        ours += [block.self_attn.in_proj_weight, block.self_attn.out_proj.weight]
        ours += [block.ff.net[0].weight, block.ff.net[3].weight]
    ours.append(model.head.weight)
    for expected, got in zip(reference, ours, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


# --- The course-lab ViT (003_*) -------------------------------------------------------------


def test_a_row_strip_patch_is_16_consecutive_pixels() -> None:
    model = CourseViT()
    images = _images()
    patches = model.image_to_patches(images)
    assert patches.shape == (4, 49, 16)
    pixels = images.reshape(4, -1)  # (B, 784), row by row
    for k in (0, 1, 2, 48):
        torch.testing.assert_close(patches[:, k], pixels[:, 16 * k : 16 * k + 16], rtol=0, atol=0)
    # Patch 1 is pixels 16..27 of row 0 and 0..3 of row 1: a strip across a row break.
    expected = torch.cat([images[:, 0, 0, 16:], images[:, 0, 1, :4]], dim=-1)
    torch.testing.assert_close(patches[:, 1], expected, rtol=0, atol=0)
    assert model.patch_grid is None


def test_square_patches_without_the_flag() -> None:
    model = CourseViT(row_strip_patches=False)
    images = _images()
    patches = model.image_to_patches(images)
    torch.testing.assert_close(patches[:, 1], images[:, 0, 0:4, 4:8].reshape(4, 16), rtol=0, atol=0)
    torch.testing.assert_close(patches[:, 7], images[:, 0, 4:8, 0:4].reshape(4, 16), rtol=0, atol=0)
    assert model.patch_grid == (7, 7)


@pytest.mark.parametrize("sequence_layernorm", [True, False])
def test_layernorm_statistics_come_from_the_whole_sequence(sequence_layernorm: bool) -> None:
    model = CourseViT(sequence_layernorm=sequence_layernorm)
    norm = model.block.norm1
    assert tuple(norm.weight.shape) == ((50, 20) if sequence_layernorm else (20,))
    x = torch.randn(3, 50, 20) * torch.linspace(0.5, 3.0, 50)[:, None] + 2.0
    out = norm(x)  # default affine: weight 1, bias 0
    whole = out.reshape(3, -1)
    per_token_means = out.mean(dim=-1)
    if sequence_layernorm:
        torch.testing.assert_close(whole.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(whole.var(-1, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
        assert per_token_means.abs().max() > 0.1  # single tokens are not centred
        expected = (x - x.mean(dim=(1, 2), keepdim=True)) / torch.sqrt(
            x.var(dim=(1, 2), unbiased=False, keepdim=True) + 1e-5
        )
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(per_token_means, torch.zeros(3, 50), atol=1e-5, rtol=0)


def _notebook_heads(model: CourseViT, x: torch.Tensor) -> torch.Tensor:
    """The notebook's MSA, head by head on its slice, from the weights on the diagonal blocks."""
    attention = model.block.self_attn
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    d, d_head = 20, 10
    heads = []
    for h in range(2):
        part = slice(h * d_head, (h + 1) * d_head)
        seq = x[..., part]  # (B, T, d_head)
        q, k, v = (
            seq @ weight[i * d + h * d_head : i * d + (h + 1) * d_head, part].T
            + bias[i * d + h * d_head : i * d + (h + 1) * d_head]
            for i in range(3)
        )
        scores = F.softmax(q @ k.transpose(-2, -1) / d_head**0.5, dim=-1)
        heads.append(scores @ v)
    return torch.cat(heads, dim=-1)  # (B, T, d)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("frozen", [True, False])
def test_a_head_sees_only_its_slice_with_every_attention_kind(kind: str, frozen: bool) -> None:
    torch.manual_seed(0)
    model = CourseViT(attention=kind, frozen_head_projections=frozen)
    attention = model.block.self_attn
    x = torch.randn(3, 50, 20)
    out, _ = attention(x, x, x, need_weights=False)
    torch.testing.assert_close(out, _notebook_heads(model, x), atol=1e-5, rtol=0)
    changed = x.clone()
    changed[..., 10:] = torch.randn(3, 50, 10)  # head 1's slice only
    out_changed, _ = attention(changed, changed, changed, need_weights=False)
    torch.testing.assert_close(out_changed[..., :10], out[..., :10], rtol=0, atol=0)
    assert not torch.allclose(out_changed[..., 10:], out[..., 10:])


def test_full_projections_let_every_head_see_the_whole_token() -> None:
    torch.manual_seed(0)
    attention = CourseViT(per_head_slice_projections=False).block.self_attn
    x = torch.randn(3, 50, 20)
    changed = x.clone()
    changed[..., 10:] = torch.randn(3, 50, 10)
    out, _ = attention(x, x, x, need_weights=False)
    out_changed, _ = attention(changed, changed, changed, need_weights=False)
    assert not torch.allclose(out_changed[..., :10], out[..., :10])


def _adam_steps(model: nn.Module, steps: int = 3) -> None:
    # As the notebook: Adam over model.parameters(), loss / batch size.
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        images = _images(8, seed=step)
        loss = F.cross_entropy(model(images), torch.arange(8) % 10) / 8
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_frozen_projections_do_not_change_after_optimiser_steps() -> None:
    torch.manual_seed(0)
    model = CourseViT()
    attention = model.block.self_attn
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _adam_steps(model)
    after = dict(model.named_parameters())
    frozen = {f"block.self_attn.{n}" for n in ("in_proj_weight", "in_proj_bias")}
    frozen |= {"block.self_attn.out_proj.weight", "block.self_attn.out_proj.bias"}
    for name, value in before.items():
        assert torch.equal(after[name], value) is (name in frozen), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not trainable & frozen
    assert attention.in_proj_weight.grad is None


def test_trained_slice_projections_stay_one_block_per_head() -> None:
    torch.manual_seed(0)
    model = CourseViT(frozen_head_projections=False)
    attention = model.block.self_attn
    before = attention.in_proj_weight.detach().clone()
    _adam_steps(model)
    after = attention.in_proj_weight.detach()
    mask = torch.block_diag(torch.ones(10, 10), torch.ones(10, 10)).repeat(3, 1).bool()
    assert torch.all(after[~mask] == 0) and torch.all(before[~mask] == 0)
    assert not torch.equal(after[mask], before[mask])  # the diagonal blocks did train


def test_no_output_projection_returns_the_concatenated_heads() -> None:
    torch.manual_seed(0)
    model = CourseViT()
    out_proj = model.block.self_attn.out_proj
    torch.testing.assert_close(out_proj.weight, torch.eye(20), rtol=0, atol=0)
    assert not out_proj.weight.requires_grad and torch.all(out_proj.bias == 0)
    clean = CourseViT(skip_output_projection=False).block.self_attn.out_proj
    assert clean.weight.requires_grad and not torch.allclose(clean.weight, torch.eye(20))


def test_the_mlp_is_one_linear_layer_and_relu() -> None:
    model = CourseViT()
    assert [type(m) for m in model.block.mlp] == [nn.Linear, nn.ReLU]
    assert model.block.mlp[0].weight.shape == (20, 20)
    clean = CourseViT(single_linear_mlp=False, d_ff=80)
    hidden = [m for m in clean.block.mlp.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in hidden] == [(80, 20), (20, 80)]


def test_the_head_returns_probabilities_that_the_loss_treats_as_logits() -> None:
    torch.manual_seed(0)
    model = CourseViT()
    probabilities = model(_images())
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(4))
    assert torch.all(probabilities >= 0)
    # Cross-entropy of probabilities: at best -log(e / (e + 9)), never near 0.
    perfect = torch.eye(10)
    floor = F.cross_entropy(perfect, torch.arange(10))
    torch.testing.assert_close(floor, torch.tensor(math.log(math.e + 9) - 1))
    clean = CourseViT(softmax_before_loss=False)
    clean.load_state_dict(model.state_dict())
    torch.testing.assert_close(clean(_images()).softmax(-1), probabilities)


def test_the_class_token_is_uniform_and_drawn_after_the_linear_mapper() -> None:
    torch.manual_seed(3)
    nn.Linear(16, 20)  # the notebook's linear_mapper draws first
    expected = torch.rand(1, 20)
    torch.manual_seed(3)
    model = CourseViT()
    torch.testing.assert_close(model.cls_token[0], expected, rtol=0, atol=0)
    clean = CourseViT(uniform_class_token=False).cls_token
    assert clean.abs().max() < 0.2 and clean.min() < 0


def test_head_projections_are_drawn_as_the_notebooks_lists() -> None:
    # linear_mapper, class token, then q_mappings (one Linear(10, 10) per head), k, v mappings.
    torch.manual_seed(4)
    nn.Linear(16, 20)
    torch.rand(1, 20)
    maps = [[nn.Linear(10, 10) for _ in range(2)] for _ in "qkv"]
    torch.manual_seed(4)
    weight = CourseViT().block.self_attn.in_proj_weight
    for i, heads in enumerate(maps):
        for h, linear in enumerate(heads):
            block = weight[20 * i + 10 * h : 20 * i + 10 * (h + 1), 10 * h : 10 * (h + 1)]
            torch.testing.assert_close(block, linear.weight, rtol=0, atol=0)


# The parameters (name, shape, trained or not) each flag may change. The empty ones change only
# the forward pass or the initial values, which the behaviour tests above check.
FLAG_CHANGES = {
    "row_strip_patches": (),
    "uniform_class_token": (),
    "sequence_layernorm": ("block.norm1.", "block.norm2."),
    "per_head_slice_projections": (),
    "frozen_head_projections": (
        "block.self_attn.in_proj",
        "block.self_attn.parametrizations.in_proj_weight",
    ),
    "skip_output_projection": ("block.self_attn.out_proj.",),
    "single_linear_mlp": ("block.mlp.",),
    "softmax_before_loss": (),
}


def _layout(model: nn.Module) -> dict[str, tuple]:
    return {n: (tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()}


@pytest.mark.parametrize("flag", VIT_FLAGS)
def test_each_flag_changes_only_the_parameters_it_names(flag: str) -> None:
    faithful, flipped = _layout(CourseViT()), _layout(CourseViT(**{flag: False}))
    differing = {n for n in faithful.keys() | flipped.keys() if faithful.get(n) != flipped.get(n)}
    assert all(n.startswith(FLAG_CHANGES[flag]) for n in differing), differing
    assert bool(differing) == bool(FLAG_CHANGES[flag])


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_the_faithful_vit_trains_and_gives_the_same_function_with_every_kind(kind: str) -> None:
    torch.manual_seed(0)
    reference = CourseViT(attention="scratch").eval()
    model = CourseViT(attention=kind).eval()
    model.load_state_dict(reference.state_dict())
    torch.testing.assert_close(model(_images()), reference(_images()), atol=1e-6, rtol=0)


def test_an_attention_kind_without_in_proj_weight_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoInProj(nn.Module):
        in_proj_weight = None

    monkeypatch.setattr("attention_lab.models.course.build_attention", lambda *a, **k: NoInProj())
    with pytest.raises(ConfigError, match=r"model\.attention='odd' has no in_proj_weight"):
        CourseViT(attention="odd")


# --- The exercise notebook's printed values (001_*) -------------------------------------------


def test_scaled_dot_product_attention_prints_the_notebooks_values() -> None:
    torch.manual_seed(42)
    q, k, v = torch.randn(2, 5, 512), torch.randn(2, 5, 512), torch.randn(2, 5, 256)
    output, weights = scaled_dot_product_attention(q, k, v)
    assert output.shape == v.shape and weights.shape == (2, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    first = [-1.3709, -0.6827, 0.3234, 0.8677, -0.1474, -0.9653, -0.7344, 0.8126, 0.1219]
    first += [0.3224, 0.6257, -0.0958, -0.1664, -0.0667, -0.2810, 0.3068, -0.7030, -0.6719]
    first += [0.4364, -1.0071, 0.3534, 0.3160, 0.0326, -0.7315, -0.5165]
    last = [-0.2094, 1.3784, 0.2855, -0.1716, 0.1597, -0.6656, 0.3981, -0.9903, -0.6043]
    last += [-0.6398, 0.0563, -1.5367, -0.0225, -0.8317, 0.0572, 0.2014, 0.1324, -0.4563]
    last += [0.3832, 0.1051, 0.0653, -0.2076, 0.6225, -0.4946, -0.2935]
    torch.testing.assert_close(output[0, 0, :25], torch.tensor(first), atol=1e-4, rtol=0)
    torch.testing.assert_close(output[-1, -1, -25:], torch.tensor(last), atol=1e-4, rtol=0)


def test_positional_encoder_prints_the_notebooks_rows() -> None:
    # The rows the notebook printed from its own code; they include x * sqrt(512). (The hint
    # above them shows other values for row 1, from a different formula.)
    encoder = PositionalEncoder(512)
    x = (torch.arange(1, 513) * 0.01).repeat(1, 4, 1).float()
    out = encoder(x)
    assert out.shape == (1, 4, 512) and not torch.equal(out, x)
    rows = [
        (out[0, 0, :5], [0.2263, 1.4525, 0.6788, 1.9051, 1.1314]),
        (out[0, 1, :5], [1.0677, 0.9929, 1.5007, 1.4748, 1.9333]),
        (out[0, 2, -5:], [115.9473, 115.1738, 116.3998, 115.6263, 116.8524]),
    ]
    for got, expected in rows:
        torch.testing.assert_close(got, torch.tensor(expected), atol=1e-4, rtol=0)


def test_self_attention_prints_the_notebooks_values_with_seed_48() -> None:
    torch.manual_seed(48)
    self_attn = SelfAttention(512, 64, 512)
    x = torch.randn(4, 10, 512)
    output = self_attn(x)
    assert output.shape == (4, 10, 512)
    torch.testing.assert_close(
        x[0, 0, :5], torch.tensor([-0.1988, -0.3060, 0.6383, 0.5713, 1.2769]), atol=1e-4, rtol=0
    )
    expected_first = [8.6836e-02, -4.1725e-02, -2.5798e-01, -9.6712e-02, 3.0022e-05]
    torch.testing.assert_close(output[0, 0, :5], torch.tensor(expected_first), atol=1e-4, rtol=0)
    expected_last = [0.1849, 0.3706, 0.1488, 0.0898, 0.2528, 0.4277, 0.4572, 0.1172, 0.0893]
    expected_last.append(-0.2081)
    torch.testing.assert_close(output[-1, -1, :10], torch.tensor(expected_last), atol=1e-4, rtol=0)
    permutation = torch.randperm(10)
    inverse = torch.argsort(permutation)
    permuted_output = self_attn(x[:, permutation])[:, inverse]
    torch.testing.assert_close(permuted_output, output, atol=1e-5, rtol=0)


def test_cross_attention_prints_the_notebooks_values_with_seed_14() -> None:
    torch.manual_seed(14)
    cross_attn = CrossAttention(512, 256, 64, 128)
    x, y = torch.randn(3, 10, 512), torch.randn(3, 10, 256)
    output = cross_attn(x, y)
    assert output.shape == (3, 10, 128)
    expected_x = [-0.0385, 0.9773, -1.4370, 0.8719, -2.1034, -0.2877, 0.3034, -1.9151, 1.1799]
    expected_y = [-2.1565, 0.2397, 0.5872, 0.3950, -0.6114, 0.3489, -0.3467, 0.2792, -1.2541]
    expected = [-0.1544, 0.0847, 0.2329, 0.0549, -0.1424, 0.0711, 0.0105, -0.2139, -0.0208]
    torch.testing.assert_close(x[0, 0, :9], torch.tensor(expected_x), atol=1e-4, rtol=0)
    torch.testing.assert_close(y[0, 0, :9], torch.tensor(expected_y), atol=1e-4, rtol=0)
    torch.testing.assert_close(output[0, 0, :9], torch.tensor(expected), atol=1e-4, rtol=0)
    torch.testing.assert_close(output[0, 0, 9], torch.tensor(-0.1942), atol=1e-4, rtol=0)


def test_multi_headed_attention_prints_the_notebooks_values_with_seed_10() -> None:
    torch.manual_seed(10)
    heads = [SelfAttention(256, 128, 64 // 8) for _ in range(8)]
    multi_attn = MultiHeadedAttention(heads, 32)
    x = torch.randn(3, 10, 256)
    output = multi_attn(x)
    assert output.shape == (3, 10, 32) and multi_attn.linear.in_features == 64
    expected_x = [0.7195, -0.3636, 1.3771, 0.3482, -0.0604, -0.3034, -0.0698, 0.2131, -0.9736]
    expected = [0.2290, -0.0350, 0.0918, -0.1069, -0.1679, -0.1939, -0.2167, 0.1841, 0.0546]
    torch.testing.assert_close(x[0, 0, :9], torch.tensor(expected_x), atol=1e-4, rtol=0)
    torch.testing.assert_close(output[0, 0, :9], torch.tensor(expected), atol=1e-4, rtol=0)
    torch.testing.assert_close(output[0, 0, 9], torch.tensor(0.1668), atol=1e-4, rtol=0)


# --- The assignment's random encoder block (000_*, printed without a seed) --------------------

# The notebook's printed input (seq 2, batch 2, d_model 2) and the Q, K, V it printed for it.
ASSIGNMENT_INPUT = [[[-0.1013, -0.4890], [-1.3201, 0.4021]], [[-0.3013, 0.5486], [0.3052, -0.4288]]]
ASSIGNMENT_QKV = {
    "W_q": [[[-0.0914, -0.7301], [-0.6554, -0.7728]], [[-0.1135, 0.4129], [0.1250, -0.2547]]],
    "W_k": [[[-0.8854, 0.1660], [1.6493, 0.9159]], [[1.2656, 0.1250], [-1.0351, -0.1499]]],
    "W_v": [[[-0.2667, 0.4326], [0.0842, 0.1197]], [[0.2592, -0.3447], [-0.1959, 0.2459]]],
}


def test_assignment_block_shapes_and_printed_projections_are_consistent() -> None:
    block = AssignmentEncoderBlock(2, 8, 16)
    names = [n for n, _ in block.named_parameters()]
    assert names == ["W_q", "W_k", "W_v", "W_o", "W1", "W2"]
    assert [tuple(p.shape) for p in block.parameters()] == [(2, 2)] * 4 + [(2, 16), (16, 2)]
    src = torch.tensor(ASSIGNMENT_INPUT)
    assert block(src).shape == (2, 2, 2)
    # Without a seed the weights are unknown, but each printed Q, K, V must be src @ W for one
    # 2x2 W: solve it from the printed values and check that it explains all four rows.
    rows = src.reshape(4, 2)
    for name, printed in ASSIGNMENT_QKV.items():
        target = torch.tensor(printed).reshape(4, 2)
        weight = torch.linalg.lstsq(rows, target).solution
        torch.testing.assert_close(rows @ weight, target, atol=2e-4, rtol=0)
        with torch.no_grad():
            getattr(block, name).copy_(weight)
    with torch.no_grad():
        block.W_o.zero_()
        block.W2.zero_()
    # With W_o = W2 = 0 both residual branches vanish: no LayerNorm despite "Add & Norm".
    torch.testing.assert_close(block(src), src, rtol=0, atol=0)


def test_assignment_block_attends_across_its_second_axis() -> None:
    torch.manual_seed(0)
    block = AssignmentEncoderBlock(2, 8, 16)
    src = torch.randn(2, 3, 2)
    changed = src.clone()
    changed[1] = torch.randn(3, 2)  # another index of the first axis
    torch.testing.assert_close(block(changed)[0], block(src)[0], rtol=0, atol=0)


# --- The experiments run the notebooks' training loop ----------------------------------------


def _plain_loop_losses(data_dir: Path, experiment: str, steps: int) -> list[float]:
    """The notebooks' loop: seed, build the model, Adam over model.parameters(), a shuffled
    DataLoader of ToTensor images (all training images, no validation split, no normalisation),
    written here with our faithful models."""
    torch.manual_seed(0)
    if experiment == "vit_mnist_course":
        model, batch_size, lr, divide = CourseViT(), 16, 0.01, True
    else:
        model, batch_size, lr, divide = CourseEncoderClassifier(), 64, 1e-3, False
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    raw = torchvision.datasets.MNIST(str(data_dir), train=True, download=False)
    images = raw.data.unsqueeze(1).float() / 255  # ToTensor
    loader = DataLoader(TensorDataset(images, raw.targets), batch_size=batch_size, shuffle=True)
    losses = []
    for (x, y), _ in zip(loader, range(steps), strict=False):
        loss = F.cross_entropy(model(x), y)
        losses.append(loss.item())
        optimizer.zero_grad()
        (loss / len(x) if divide else loss).backward()
        optimizer.step()
    return losses


@pytest.mark.parametrize("experiment", ["vit_mnist_course", "mnist_encoder_course"])
def test_the_experiment_trains_step_for_step_as_the_notebooks_loop(
    compose_config: ComposeFn, tiny_mnist: Path, experiment: str
) -> None:
    steps = 4
    cfg = compose_config(
        f"experiment={experiment}",
        "logger=csv",
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={steps}",
        "trainer.log_every_n_steps=1",
        "test=false",
        data_dir=tiny_mnist,
    )
    train(cfg)
    rows = csv.DictReader(next(Path(cfg.paths.output_dir).rglob("metrics.csv")).open())
    logged = [float(row["train/loss_step"]) for row in rows if row.get("train/loss_step")]
    expected = _plain_loop_losses(tiny_mnist, experiment, steps)
    torch.testing.assert_close(torch.tensor(logged), torch.tensor(expected), atol=1e-5, rtol=0)
