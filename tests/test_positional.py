"""Position encodings: the paper's formula, value for value."""

from __future__ import annotations

import math

import pytest
import torch

from attention_lab.nn.positional import (
    LearnedPositionalEncoding,
    RelativePositionBias,
    SinusoidalPositionalEncoding,
    alibi_bias,
    alibi_slopes,
    build_positional,
    sinusoidal_encoding,
)


def test_sinusoidal_values_follow_the_paper() -> None:
    length, d_model = 50, 16
    table = sinusoidal_encoding(length, d_model)
    assert table.shape == (length, d_model)
    for pos in (0, 1, 7, 49):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_position_zero_is_sin0_cos0() -> None:
    torch.testing.assert_close(sinusoidal_encoding(1, 6)[0], torch.tensor([0.0, 1.0] * 3))


def test_sinusoidal_needs_an_even_width() -> None:
    with pytest.raises(ValueError, match="even d_model"):
        sinusoidal_encoding(4, 7)


def test_sinusoidal_module_adds_the_table_and_saves_nothing() -> None:
    module = SinusoidalPositionalEncoding(d_model=8, max_len=10)
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(module(x), x + sinusoidal_encoding(6, 8))
    assert module.state_dict() == {}


def test_learned_module_is_a_trainable_table() -> None:
    module = LearnedPositionalEncoding(d_model=8, max_len=10)
    x = torch.zeros(2, 4, 8)
    torch.testing.assert_close(module(x), module.table[:4].expand(2, 4, 8))
    assert module.table.requires_grad


def test_sequences_longer_than_max_len_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than max_len=3"):
        build_positional("sinusoidal", d_model=4, max_len=3)(torch.zeros(1, 4, 4))


def test_unknown_kind_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"positional='rotary'.*sinusoidal, learned, none"):
        build_positional("rotary", d_model=4, max_len=3)


def test_alibi_slopes_are_the_papers_geometric_sequence() -> None:
    # "For models with 8 heads, the slopes that we used are ... 1/2^1, 1/2^2, ..., 1/2^8."
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-k for k in range(1, 9)]))
    # 16 heads: "we interpolate ... 1/2^0.5, 1/2^1, 1/2^1.5, ..., 1/2^8."
    torch.testing.assert_close(alibi_slopes(16)[:3], torch.tensor([2**-0.5, 2**-1.0, 2**-1.5]))


def test_alibi_bias_is_minus_slope_times_distance_both_ways() -> None:
    bias = alibi_bias(2, 4)  # slopes 1/16, 1/256
    assert bias.shape == (2, 4, 4)
    torch.testing.assert_close(bias, bias.transpose(1, 2))
    assert bias.diagonal(dim1=1, dim2=2).abs().max() == 0
    assert bias[0, 0, 3].item() == pytest.approx(-3 / 16)
    assert bias[1, 2, 0].item() == pytest.approx(-2 / 256)


def test_relative_bias_starts_as_alibi_within_its_window_and_clips_beyond() -> None:
    relative = RelativePositionBias(2, window=3)
    bias = relative(6)  # (H, T, T)
    assert bias.shape == (2, 6, 6)
    alibi = alibi_bias(2, 6)
    near = (torch.arange(6)[None, :] - torch.arange(6)[:, None]).abs() <= 3  # (T, T)
    torch.testing.assert_close(bias[:, near], alibi[:, near])
    # Offsets past the window share the bias of offset +-3: key 5 from query 0 is offset 5.
    assert bias[0, 0, 5].item() == pytest.approx(alibi[0, 0, 3].item())
    assert bias[1, 5, 0].item() == pytest.approx(alibi[1, 3, 0].item())


def test_relative_bias_tells_left_from_right_once_learned() -> None:
    relative = RelativePositionBias(1, window=2)
    with torch.no_grad():
        relative.bias.copy_(torch.tensor([[-2.0, -1.0, 0.0, 0.5, 3.0]]))  # offsets -2..2
    bias = relative(4)[0]  # (T, T)
    assert bias[1, 2].item() == 0.5  # key one to the right
    assert bias[2, 1].item() == -1.0  # key one to the left
    assert bias[0, 3].item() == 3.0  # offset 3, clipped to 2
    # Gradients reach each offset's bias by how often it occurs: 4 on the diagonal.
    relative(4).sum().backward()
    torch.testing.assert_close(relative.bias.grad, torch.tensor([[3.0, 3.0, 4.0, 3.0, 3.0]]))


def test_relative_bias_needs_a_window() -> None:
    with pytest.raises(ValueError, match="relative_window=0"):
        RelativePositionBias(2, window=0)
