"""Mixed precision, torch.compile and DDP on CPU processes: each runs and stays finite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from attention_lab.nn.attention import scaled_dot_product_attention
from attention_lab.training import train
from tests.conftest import ComposeFn, run_train_py


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_softmax_stays_finite_in_half_precision(dtype: torch.dtype) -> None:
    q, k, v = (torch.randn(2, 4, 6, 8, dtype=dtype) * 30 for _ in range(3))
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    mask[2] = False  # one query may attend to nothing
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert torch.all(out[..., 2, :] == 0)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("model", ["encoder_classifier", "vit"])
def test_mixed_precision_runs_on_cpu(
    compose_config: ComposeFn, tiny_mnist: Path, precision: str, model: str
) -> None:
    # On the CPU Lightning runs 16-mixed as bf16 autocast (it warns); both must stay finite.
    cfg = compose_config(
        f"model={model}",
        "model.n_layers=1",
        f"trainer.precision={precision}",
        "trainer.accelerator=cpu",
        "debug=smoke",
        "logger=none",
        "data.val_size=56",
        data_dir=tiny_mnist,
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["test"]["test/loss"])


@pytest.mark.slow
def test_compiled_model_trains_and_keeps_its_parameter_names(
    compose_config: ComposeFn, tiny_mnist: Path
) -> None:
    cfg = compose_config(
        "model.compile=true",
        "model.n_layers=1",
        "model.d_model=16",
        "debug=smoke",
        "logger=none",
        "data.val_size=56",
        data_dir=tiny_mnist,
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["test"]["test/loss"])
    state = torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]
    assert "net.to_embedding.weight" in state  # no "_orig_mod." prefix from compilation


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
