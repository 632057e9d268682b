"""Encoder blocks and the encoder classifier: behaviour, not only shapes."""

from __future__ import annotations

import pytest
import torch

from attention_lab.models import EncoderClassifier
from attention_lab.nn.attention import MultiHeadAttention
from attention_lab.nn.blocks import EncoderBlock, EncoderSpec, keep_attention_weights

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "dropout": 0.0}


@pytest.mark.parametrize("other", ["torch", "scratch_fused", "scratch_flash"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_every_attention_kind_computes_the_same_function(norm_first: bool, other: str) -> None:
    torch.manual_seed(0)
    scratch = EncoderClassifier(**SMALL, norm_first=norm_first, attention="scratch").eval()
    reference = EncoderClassifier(**SMALL, norm_first=norm_first, attention=other).eval()
    reference.load_state_dict(scratch.state_dict())
    images = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(scratch(images), reference(images), atol=1e-5, rtol=0)


def test_pre_norm_and_post_norm_differ() -> None:
    torch.manual_seed(0)
    pre = EncoderBlock(EncoderSpec(n_layers=1, d_model=8, n_heads=2, d_ff=16)).eval()
    post = EncoderBlock(EncoderSpec(n_layers=1, d_model=8, n_heads=2, d_ff=16, norm_first=False))
    post = post.eval()
    post.load_state_dict(pre.state_dict())
    x = torch.randn(2, 5, 8)
    assert not torch.allclose(pre(x), post(x))
    # Post-norm ends in a LayerNorm: every position comes out normalised.
    torch.testing.assert_close(post(x).mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("tokens", "pooling", "n_tokens"),
    [("rows", "mean", 28), ("patches", "mean", 49), ("patches", "cls", 50), ("flat", "mean", 1)],
)
def test_tokenisations_give_logits_and_the_right_number_of_tokens(
    tokens: str, pooling: str, n_tokens: int
) -> None:
    model = EncoderClassifier(**SMALL, tokens=tokens, patch_size=4, pooling=pooling).eval()
    with keep_attention_weights(model) as blocks:
        logits = model(torch.randn(3, 1, 28, 28))
        weights = blocks[0].attention_weights
    assert logits.shape == (3, 10)
    assert weights.shape == (3, 2, n_tokens, n_tokens)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, n_tokens))


def test_attention_weights_are_kept_only_when_asked() -> None:
    model = EncoderClassifier(**SMALL)
    model(torch.randn(2, 1, 28, 28))
    assert all(block.attention_weights is None for block in model.encoder.blocks)
    with keep_attention_weights(model) as blocks:
        model(torch.randn(2, 1, 28, 28))
        assert len(blocks) == 2 and all(b.attention_weights is not None for b in blocks)
    assert all(not b.keep_attention and b.attention_weights is None for b in model.encoder.blocks)


def test_one_token_makes_attention_the_value_projection() -> None:
    # Why the README warns against a single whole-image token: softmax over one key is 1.
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2, batch_first=True)
    x = torch.randn(4, 1, 8)
    value_weight = attention.in_proj_weight[16:]
    value_bias = attention.in_proj_bias[16:]
    expected = attention.out_proj(x @ value_weight.T + value_bias)
    torch.testing.assert_close(attention(x, x, x)[0], expected)


def test_cls_pooling_reads_the_class_token() -> None:
    model = EncoderClassifier(**SMALL, tokens="patches", patch_size=7, pooling="cls")
    assert model.cls_token.shape == (1, 1, 16)
    logits = model(torch.randn(2, 1, 28, 28))
    logits.sum().backward()
    assert model.cls_token.grad is not None and model.cls_token.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "flash"}, "attention='flash' is not a known attention kind"),
        ({"d_model": 30, "n_heads": 4}, "d_model=30 is not divisible by n_heads=4"),
        ({"tokens": "patches", "patch_size": 5}, "patch_size=5 does not divide image_size=28"),
        ({"tokens": "pixels"}, "tokens='pixels' is not known"),
        ({"pooling": "max"}, "pooling='max' is not known"),
        ({"n_layers": 0}, "n_layers=0 must be positive"),
        ({"activation": "tanh"}, "activation='tanh' is not known"),
    ],
)
def test_bad_arguments_give_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EncoderClassifier(**{**SMALL, **kwargs})
