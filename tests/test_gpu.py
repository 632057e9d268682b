"""Every path on a GPU: attention kinds per dtype, every experiment per kind, precision and
compilation, DDP, attention maps and W&B offline. They run where CUDA is present:

    python -m pytest -m gpu -q

(``-k eager`` / ``-k compiled`` split the training cases: compiling them takes minutes) and are
skipped elsewhere. ``ATTENTION_LAB_TEST_DEVICE=cpu`` runs them on the CPU instead
(without 16-mixed and fp16, which Lightning and PyTorch's CPU kernels do not offer): that is how
the tests themselves are checked on a machine without a GPU; it says nothing about CUDA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from attention_lab.nn.attention import (
    ATTENTION_KINDS,
    PORTABLE_KINDS,
    build_attention,
    causal_mask,
)
from attention_lab.run.records import METRICS_FILE
from attention_lab.run.training import train
from tests.conftest import CONF_DIR, ComposeFn, TinyDataFn, run_train_py
from tests.wandb_records import read_offline_run

DEVICE = os.environ.get("ATTENTION_LAB_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE == "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        ON_CUDA and not torch.cuda.is_available(),
        reason="needs CUDA (ATTENTION_LAB_TEST_DEVICE=cpu checks these tests on the CPU)",
    ),
]
ACCELERATOR = "trainer=gpu" if ON_CUDA else "trainer=cpu"
PRECISIONS = ["32-true", "16-mixed", "bf16-mixed"] if ON_CUDA else ["32-true", "bf16-mixed"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16] if ON_CUDA else [torch.float32]
# Largest error against the fp32 explicit computation, relative to the output's scale: fp32 up
# to reordered sums; half precisions at their 8-bit (bf16) and 11-bit (fp16) mantissas.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 4e-2, torch.float16: 6e-3}
# On the CPU, scratch_triton would run in Triton's interpreter: tests/test_triton_flash.py checks
# it there on small sizes.
KINDS = ATTENTION_KINDS if ON_CUDA else PORTABLE_KINDS
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def _attention_step(kind: str, dtype: torch.dtype, length: int) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and in-projection gradient of one layer of ``kind`` under
    autocast to ``dtype`` (none for fp32), with padding and the causal mask, seed 0."""
    torch.manual_seed(0)
    module = build_attention(kind, d_model=64, n_heads=4, dropout=0.0).to(DEVICE)
    x = torch.randn(2, length, 64, device=DEVICE, requires_grad=True)
    padding = torch.zeros(2, length, dtype=torch.bool, device=DEVICE)
    padding[1, length * 3 // 4 :] = True  # True = ignore, as nn.MultiheadAttention
    later = ~causal_mask(length, device=DEVICE)  # (T, T), True = ignore
    with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
        out, _ = module(
            x, x, x, key_padding_mask=padding, attn_mask=later, is_causal=True, need_weights=False
        )
    # A sum, not a mean: without a loss scale, fp16 gradients of a mean over 2*T*64 outputs
    # underflow (on an H100, T = 1024: W_in grad off by 0.29-0.32 for every kind, torch's too).
    out.float().square().sum().backward()
    return out.float(), x.grad, module.in_proj_weight.grad


@pytest.mark.parametrize("length", [128, 1024])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_matches_the_fp32_explicit_math(
    kind: str, dtype: torch.dtype, length: int
) -> None:
    expected = _attention_step("scratch", torch.float32, length)
    actual = _attention_step(kind, dtype, length)
    for name, want, got in zip(
        ("output", "input grad", "W_in grad"), expected, actual, strict=True
    ):
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), name
        error = (got - want).abs().max() / want.abs().max()
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e}"


def _step_cases() -> list[tuple[str, str, str, bool]]:
    """Every experiment with every kind in the fastest precision; every precision on one model
    of each kind of task; compiled models beside eager ones."""
    fast = "bf16-mixed" if ON_CUDA else "32-true"
    cases = [(e, kind, fast, False) for e in EXPERIMENTS for kind in KINDS]
    for experiment in ("mnist_encoder", "vit_mnist", "multi30k_transformer", "ud_pos_transformer"):
        cases += [(experiment, kind, p, False) for kind in KINDS for p in PRECISIONS]
        compiled = [k for k in KINDS if k != "scratch_fused"]
        cases += [(experiment, kind, fast, True) for kind in compiled]
    return list(dict.fromkeys(cases))


@pytest.mark.parametrize(
    ("experiment", "attention", "precision", "compiled"),
    _step_cases(),
    ids=lambda value: ("compiled" if value else "eager") if isinstance(value, bool) else None,
)
def test_every_experiment_trains_on_the_device(
    compose_config: ComposeFn,
    tiny_data_for: TinyDataFn,
    experiment: str,
    attention: str,
    precision: str,
    compiled: bool,
) -> None:
    if experiment == "sst2_bert":
        pytest.skip("sst2_bert needs the bert-base-uncased checkpoint (tests/test_sst2_bert.py)")
    data_dir, data_setting, metric, top = tiny_data_for(compose_config(f"experiment={experiment}"))
    cfg = compose_config(
        f"experiment={experiment}",
        f"model.attention={attention}",
        ACCELERATOR,
        f"trainer.precision={precision}",
        f"model.compile={str(compiled).lower()}",
        "debug=fast_dev_run",
        "trainer.fast_dev_run=3",  # three training steps, then one validation and test batch
        "logger=csv",
        data_setting,
        data_dir=data_dir,
    )
    metrics = train(cfg)
    assert metrics["attention"] == attention
    assert 0.0 <= metrics["test"][metric] <= top
    assert all(value == value for value in metrics["test"].values())  # no NaN
    if ON_CUDA:
        assert torch.cuda.max_memory_allocated() > 0


def test_ddp_runs_on_one_device(tmp_path: Path, tiny_mnist: Path) -> None:
    run_dir = tmp_path / "run"
    accelerator = "gpu" if ON_CUDA else "cpu"
    result = run_train_py(
        "trainer=ddp",
        f"trainer.accelerator={accelerator}",
        "trainer.devices=1",
        "debug=fast_dev_run",
        "logger=csv",
        "data.val_size=56",
        f"hydra.run.dir={run_dir}",
        data_dir=tiny_mnist,
        home=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0


@pytest.mark.parametrize("attention", ["scratch", "scratch_flash", "torch"])
def test_attention_maps_and_wandb_offline_on_the_device(
    tmp_path: Path, tiny_mnist: Path, attention: str
) -> None:
    run_dir = tmp_path / "run"
    result = run_train_py(
        ACCELERATOR,
        "debug=smoke",
        "data.val_size=56",
        f"model.attention={attention}",
        f"hydra.run.dir={run_dir}",
        data_dir=tiny_mnist,
        home=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    maps = sorted((run_dir / "attention").rglob("*.png"))
    assert maps, "no attention map written"
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    logged = read_offline_run(offline_run)
    assert logged["config"]["model"]["attention"] == attention
    assert "test/acc" in logged["summary"]
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    gpus = metrics["provenance"]["machine"]["gpus"]
    assert bool(gpus) == ON_CUDA
