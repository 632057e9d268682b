"""The Vision Transformer: shapes for any divisible image size, switches, and bad settings."""

from __future__ import annotations

import pytest
import torch

from attention_lab.models import VisionTransformer
from attention_lab.nn.blocks import keep_attention_weights

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "dropout": 0.0}


def test_mnist_sized_images_give_logits_over_cls_and_patches() -> None:
    model = VisionTransformer(**SMALL, patch_size=4).eval()
    with keep_attention_weights(model) as blocks:
        logits = model(torch.randn(3, 1, 28, 28))
        weights = blocks[-1].attention_weights
    assert logits.shape == (3, 10)
    assert weights.shape == (3, 2, 50, 50)  # class token + 7 x 7 patches
    assert model.token_labels()[:3] == ["cls", "(0,0)", "(0,1)"]
    assert model.patch_grid == (7, 7)


def test_three_channel_32px_images() -> None:
    model = VisionTransformer(**SMALL, image_size=32, in_channels=3, patch_size=8, num_classes=5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert model.to_patch_embedding[1].in_features == 3 * 8 * 8


@pytest.mark.parametrize(
    ("image_size", "in_channels", "patch_size", "grid"),
    [(28, 1, 4, 7), (32, 3, 8, 4), (28, 1, 1, 28)],
)
def test_conv_stem_gives_the_patch_stems_tokens(
    image_size: int, in_channels: int, patch_size: int, grid: int
) -> None:
    kwargs = {"image_size": image_size, "in_channels": in_channels, "patch_size": patch_size}
    conv = VisionTransformer(**SMALL, **kwargs, stem="conv").eval()
    patch = VisionTransformer(**SMALL, **kwargs).eval()
    images = torch.randn(2, in_channels, image_size, image_size)
    tokens = conv.to_patch_embedding(images)
    assert tokens.shape == patch.to_patch_embedding(images).shape == (2, grid * grid, 16)
    assert conv.patch_grid == (grid, grid)
    # Tokens in row-major grid order, each seeing its own cell: changing the top-right cell's
    # pixels moves token g - 1 (a transposed order would move token (g - 1) g instead).
    changed = images.clone()
    changed[..., :patch_size, (grid - 1) * patch_size :] += 1.0
    moved = (conv.to_patch_embedding(changed) - tokens).abs().amax(dim=(0, 2))  # (N,)
    assert moved[grid - 1] > 0 and moved[(grid - 1) * grid] == 0


def test_conv_stem_trains_and_its_kinds_agree() -> None:
    torch.manual_seed(0)
    scratch = VisionTransformer(**SMALL, stem="conv", attention="scratch")
    scratch(torch.randn(4, 1, 28, 28)).sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in scratch.to_patch_embedding.parameters())
    reference = VisionTransformer(**SMALL, stem="conv", attention="torch")
    reference.load_state_dict(scratch.state_dict())  # BatchNorm's running statistics too
    images = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(scratch.eval()(images), reference.eval()(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize(
    ("class_token", "pooling"), [(True, "cls"), (True, "mean"), (False, "mean")]
)
def test_options_all_run(positional: str, class_token: bool, pooling: str) -> None:
    model = VisionTransformer(
        **SMALL, positional=positional, class_token=class_token, pooling=pooling
    )
    logits = model(torch.randn(2, 1, 28, 28))
    logits.sum().backward()
    assert logits.shape == (2, 10)


def test_class_token_pooling_reads_only_the_class_token() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    images = torch.randn(1, 1, 28, 28, requires_grad=True)
    model(images)[0, 0].backward()
    assert images.grad.abs().sum() > 0  # the class token gathers from the patches


def test_scratch_and_torch_vits_compute_the_same_function() -> None:
    torch.manual_seed(0)
    scratch = VisionTransformer(**SMALL, attention="scratch").eval()
    reference = VisionTransformer(**SMALL, attention="torch").eval()
    reference.load_state_dict(scratch.state_dict())
    images = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(scratch(images), reference(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": 5}, "patch_size=5 does not divide image_size=28"),
        ({"class_token": False, "pooling": "cls"}, "pooling='cls' needs the class token"),
        ({"pooling": "max"}, "pooling='max' is not known"),
        ({"stem": "resnet"}, "stem='resnet' is not known"),
        ({"stem": "conv", "patch_size": 7}, "patch_size must be a power of 2, not 7"),
        (
            {"stem": "conv", "patch_size": 8, "image_size": 32, "d_model": 2, "n_heads": 1},
            "d_model=2 is too narrow for patch_size=8",
        ),
        ({"d_model": 18, "n_heads": 4}, "d_model=18 is not divisible by n_heads=4"),
        ({"attention": "flash"}, "attention='flash' is not a known attention kind"),
    ],
)
def test_bad_settings_give_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**{**SMALL, **kwargs})


def test_wrong_image_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"images are \(32, 32\) but image_size=28"):
        VisionTransformer(**SMALL)(torch.randn(1, 1, 32, 32))
