"""Every config in conf/ composes, and every experiment runs a step on tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from attention_lab.training import train
from tests.conftest import CONF_DIR, ComposeFn

# Groups whose every option is composed by itself; experiment and debug are run below.
GROUPS = ["data", "model", "task", "trainer", "logger", "callbacks", "paths"]


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def _experiments() -> list[str]:
    return _options("experiment")


@pytest.mark.parametrize(
    ("group", "option"), [(group, option) for group in GROUPS for option in _options(group)]
)
def test_every_option_composes(compose_config: ComposeFn, group: str, option: str) -> None:
    cfg = compose_config(f"{group}={option}")
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.seed == 0


@pytest.mark.parametrize("debug", _options("debug"))
def test_every_debug_config_composes(compose_config: ComposeFn, debug: str) -> None:
    OmegaConf.resolve(compose_config(f"debug={debug}"))


def test_there_are_experiments() -> None:
    assert "mnist_encoder" in _experiments()


@pytest.mark.parametrize("experiment", _experiments())
@pytest.mark.parametrize("attention", ["scratch", "scratch_fused", "torch"])
def test_every_experiment_runs_a_step(
    compose_config: ComposeFn, tiny_mnist: Path, experiment: str, attention: str
) -> None:
    cfg = compose_config(
        f"experiment={experiment}",
        f"model.attention={attention}",
        "debug=fast_dev_run",
        "logger=csv",
        "data.val_size=56",
        data_dir=tiny_mnist,
    )
    assert cfg.experiment_name == experiment
    metrics = train(cfg)
    assert metrics["attention"] == attention
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0
