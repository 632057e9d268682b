"""Attention rollout, the plots, the augmentation, and the attention-map callback in a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attention_lab.attention_maps import attention_rollout, plot_heads, plot_rollout
from attention_lab.data.augment import random_affine
from attention_lab.errors import ConfigError
from attention_lab.run.training import train
from tests.conftest import ComposeFn


def test_rollout_of_identity_attention_is_the_identity() -> None:
    identity = torch.eye(5).expand(2, 3, 5, 5)  # (N, H, T, T)
    torch.testing.assert_close(attention_rollout([identity] * 4), torch.eye(5).expand(2, 5, 5))


def test_rollout_mixes_the_residual_and_multiplies_layers() -> None:
    uniform = torch.full((1, 2, 4, 4), 0.25)
    rollout = attention_rollout([uniform, uniform], residual=0.5)
    one_layer = 0.5 * torch.eye(4) + 0.5 * torch.full((4, 4), 0.25)
    torch.testing.assert_close(rollout[0], one_layer @ one_layer)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(1, 4))


def test_plots_have_one_panel_per_head_and_label_the_tokens(tmp_path: Path) -> None:
    labels = [f"row {i}" for i in range(6)]
    figure = plot_heads(torch.rand(3, 6, 6).softmax(-1), labels, labels, "layer0")
    panels = [ax for ax in figure.axes if ax.get_title().startswith("head")]
    assert len(panels) == 3
    assert [t.get_text() for t in panels[0].get_yticklabels()] == labels
    figure.savefig(tmp_path / "heads.png")
    rollout = plot_rollout(torch.rand(1, 28, 28), torch.rand(50, 50), (7, 7), "sample 0")
    rollout.savefig(tmp_path / "rollout.png")
    assert (tmp_path / "heads.png").stat().st_size > 0 and (tmp_path / "rollout.png").is_file()


def test_plots_leave_out_the_padding_of_shorter_samples() -> None:
    """Positions labelled "" at the end (padding to the batch's longest sample) are not drawn:
    the panel shows the sample's own 4 x 4 weights, not 6 x 6."""
    labels = ["[CLS]", "a", "", "b", "", ""]  # an empty label inside is kept
    weights = torch.rand(2, 6, 6).softmax(-1)
    figure = plot_heads(weights, labels, labels, "layer0")
    panel = next(ax for ax in figure.axes if ax.get_title() == "head 1")
    assert panel.get_images()[0].get_array().shape == (4, 4)
    torch.testing.assert_close(
        torch.as_tensor(panel.get_images()[0].get_array().data), weights[1, :4, :4]
    )
    assert [t.get_text() for t in panel.get_xticklabels()] == labels[:4]


def test_random_affine_is_identity_at_zero_and_moves_pixels_otherwise() -> None:
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(random_affine(images), images, atol=1e-5, rtol=0)
    shifted = random_affine(
        images, translate=0.2, degrees=15, generator=torch.Generator().manual_seed(0)
    )
    assert shifted.shape == images.shape and not torch.allclose(shifted, images)


def _pngs(run_dir: Path, tag: str) -> list[str]:
    return sorted(p.name for p in (run_dir / "attention" / tag).glob("*.png"))


@pytest.mark.parametrize("attention", ["scratch", "torch"])
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            "encoder_classifier",
            [
                "layer0_sample0.png",
                "layer0_sample1.png",
                "layer1_sample0.png",
                "layer1_sample1.png",
            ],
        ),
        (
            "vit",
            [
                "layer0_sample0.png",
                "layer0_sample1.png",
                "layer1_sample0.png",
                "layer1_sample1.png",
                "rollout_sample0.png",
                "rollout_sample1.png",
            ],
        ),
    ],
)
def test_callback_writes_the_maps_of_every_model_and_attention_kind(
    compose_config: ComposeFn, tiny_mnist: Path, model: str, attention: str, expected: list[str]
) -> None:
    cfg = compose_config(
        f"model={model}",
        f"model.attention={attention}",
        "model.n_layers=2",
        "model.d_model=16",
        "debug=fast_dev_run",
        "logger=none",
        "data.val_size=56",
        data_dir=tiny_mnist,
    )
    train(cfg)
    assert _pngs(Path(cfg.paths.output_dir), "test") == expected


def test_callback_logs_validation_maps_to_wandb_offline(
    compose_config: ComposeFn, tiny_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.wandb_records import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config(
        "model=vit",
        "model.n_layers=1",
        "model.d_model=16",
        "debug=smoke",
        "callbacks.attention_maps.every_n_epochs=1",
        "data.val_size=56",
        data_dir=tiny_mnist,
    )
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert _pngs(run_dir, "epoch000") == [
        "layer0_sample0.png",
        "layer0_sample1.png",
        "rollout_sample0.png",
        "rollout_sample1.png",
    ]
    import wandb

    wandb.finish()
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    logged = {k: v for row in read_offline_run(offline_run)["history"] for k, v in row.items()}
    for key in ("attention/val/layer0", "attention/val/rollout", "attention/test/layer0"):
        assert logged[f"{key}/_type"] == "images/separated"
        assert logged[f"{key}/count"] == 2  # one image per sample


def test_too_few_validation_samples_is_a_clear_error(
    compose_config: ComposeFn, tiny_mnist: Path
) -> None:
    cfg = compose_config(
        "callbacks.attention_maps.num_samples=64",
        "data.eval_batch_size=8",
        "logger=none",
        "data.val_size=56",
        data_dir=tiny_mnist,
    )
    with pytest.raises(ConfigError, match=r"callbacks\.attention_maps\.num_samples=64"):
        train(cfg)


@pytest.mark.parametrize("attention", ["scratch", "torch"])
def test_callback_draws_translation_alignments(
    compose_config: ComposeFn, tiny_multi30k: Path, attention: str
) -> None:
    cfg = compose_config(
        "experiment=multi30k_transformer",
        f"model.attention={attention}",
        "model.n_layers=1",
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_ff=64",
        "data.vocab_size=200",
        "debug=fast_dev_run",
        "logger=none",
        data_dir=tiny_multi30k,
    )
    train(cfg)
    names = _pngs(Path(cfg.paths.output_dir), "test")
    for module in ("encoder_layer0", "decoder_layer0_self", "decoder_layer0_cross"):
        assert f"{module}_sample0.png" in names and f"{module}_sample1.png" in names
