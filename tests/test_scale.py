"""Mixed precision, torch.compile and DDP on CPU processes: each runs and stays finite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from attention_lab.nn.attention import scaled_dot_product_attention
from attention_lab.run.training import build_model, train
from tests.conftest import ComposeFn, run_train_py


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_softmax_stays_finite_in_half_precision(dtype: torch.dtype) -> None:
    q, k, v = (torch.randn(2, 4, 6, 8, dtype=dtype) * 30 for _ in range(3))
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    mask[2] = False  # one query may attend to nothing
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert torch.all(out[..., 2, :] == 0)


def _tiny_run_settings(experiment: str, tiny_mnist: Path, tiny_multi30k: Path) -> dict:
    """Overrides and data folder for a one-layer run of ``experiment`` on the tiny data sets."""
    if experiment == "multi30k_transformer":
        # An untrained translator decodes to its length limit: 3 tokens more than the source,
        # not 50 (each new length a step of the decoder, compiled or not).
        overrides = [
            "data.vocab_size=200",
            "model.d_model=32",
            "model.n_heads=4",
            "task.max_extra_len=3",
        ]
        return {"overrides": overrides, "data_dir": tiny_multi30k}
    return {"overrides": ["data.val_size=56", "model.d_model=16"], "data_dir": tiny_mnist}


EXPERIMENTS = ["mnist_encoder", "vit_mnist", "multi30k_transformer"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_mixed_precision_runs_on_cpu(
    compose_config: ComposeFn,
    tiny_mnist: Path,
    tiny_multi30k: Path,
    precision: str,
    experiment: str,
) -> None:
    # On the CPU Lightning runs 16-mixed as bf16 autocast (it warns); both must stay finite,
    # decoding (greedy for val/bleu, beam search for test/bleu) included.
    settings = _tiny_run_settings(experiment, tiny_mnist, tiny_multi30k)
    cfg = compose_config(
        f"experiment={experiment}",
        "model.n_layers=1",
        f"trainer.precision={precision}",
        "trainer.accelerator=cpu",
        "debug=smoke",
        "logger=none",
        *settings["overrides"],
        data_dir=settings["data_dir"],
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["test"]["test/loss"])


# The ViT's compiled forward is checked against eager below; a whole compiled ViT run would add
# about a minute of compilation and no code path these two do not already take.
@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["mnist_encoder", "multi30k_transformer"])
def test_compiled_model_trains_and_keeps_its_parameter_names(
    compose_config: ComposeFn, tiny_mnist: Path, tiny_multi30k: Path, experiment: str
) -> None:
    settings = _tiny_run_settings(experiment, tiny_mnist, tiny_multi30k)
    cfg = compose_config(
        f"experiment={experiment}",
        "model.compile=true",
        "model.n_layers=1",
        "debug=smoke",
        "logger=none",
        *settings["overrides"],
        data_dir=settings["data_dir"],
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["test"]["test/loss"])
    state = torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]
    assert state and not any("_orig_mod" in name for name in state)  # names as in eager


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_compiled_model_matches_eager(
    compose_config: ComposeFn, tiny_mnist: Path, tiny_multi30k: Path, experiment: str
) -> None:
    settings = _tiny_run_settings(experiment, tiny_mnist, tiny_multi30k)
    cfg = compose_config(f"experiment={experiment}", "model.n_layers=1", *settings["overrides"])
    if experiment == "multi30k_transformer":
        cfg.model.src_vocab_size = cfg.model.tgt_vocab_size = 50
        cfg.model.max_len = 16
        src, tgt = torch.randint(1, 50, (3, 7)), torch.randint(1, 50, (3, 5))
        src[0, -2:] = cfg.model.pad_id  # padded source positions, masked in both
        inputs = (src, tgt)
    else:
        inputs = (torch.rand(3, cfg.model.in_channels, 28, 28),)
    eager = build_model(cfg).eval()
    cfg.model.compile = True
    compiled = build_model(cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), eager(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path, tiny_mnist: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train_py(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "debug=smoke",
        "logger=csv",
        "model.n_layers=1",
        "data.val_size=56",
        f"hydra.run.dir={run_dir}",
        data_dir=tiny_mnist,
        home=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # 200 training images split between two processes: one batch of 100 each, one step.
    assert metrics["steps"] == 1
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0
    history = (run_dir / "history.jsonl").read_text().splitlines()
    assert len(history) == 1  # written by rank 0 only
    assert len(list((run_dir / "attention" / "test").glob("*.png"))) == 2  # 1 layer x 2 samples
