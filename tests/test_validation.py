"""Bad settings stop a run with one clear message naming the config key, before any work.

``BAD_INPUTS`` is the table in the README's troubleshooting section: keep the two in step.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest
import torch
import torchvision.datasets.mnist
from omegaconf import DictConfig

import attention_lab.run.config
import attention_lab.run.training
from attention_lab.data import MNISTDataModule
from attention_lab.errors import AttentionLabError, ConfigError
from attention_lab.run.training import train
from tests.conftest import ComposeFn

# Where each check happens: "config" before anything is built (attention_lab.run.config.validate),
# "constructor" when the model or data module is built (no data looked at yet), "data" when the
# data is looked for (before any logger or trainer exists).
BAD_INPUTS = [
    # overrides, message (a regular expression), where
    (
        ["model.attention=flash"],
        r"model.attention='flash' is not a known attention kind",
        "constructor",
    ),
    (["model.n_heads=3"], r"model.d_model=64 is not divisible by n_heads=3", "constructor"),
    (
        ["model.tokens=patches", "model.patch_size=5"],
        r"model.patch_size=5 does not divide image_size=28",
        "constructor",
    ),
    (["model.d_model=0"], r"model.d_model=0 must be positive", "constructor"),
    (["model.n_layers=-2"], r"model.n_layers=-2 must be positive", "constructor"),
    (
        ["data.batch_size=0"],
        r"data.batch_size=0 and data.eval_batch_size=512 must be",
        "constructor",
    ),
    (["trainer.precision=64-fake"], r"trainer.precision=64-fake is not known", "config"),
    (["trainer.accelerator=quantum"], r"trainer.accelerator=quantum is not known", "config"),
    (["trainer.accelerator=tpu"], r"trainer.accelerator=tpu is not available", "config"),
    pytest.param(
        ["trainer.accelerator=gpu"],
        r"trainer.accelerator=gpu is not available on this machine",
        "config",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
    ),
    (["trainer.max_epochs=0"], r"trainer.max_epochs=0 trains nothing", "config"),
    (["seed=-1"], r"seed=-1 must be an integer from 0 to 4294967295", "config"),
    (["ckpt_path=missing.ckpt"], r"ckpt_path=missing.ckpt does not exist", "config"),
    (["ckpt_path=last"], r"ckpt_path=last: there is no .*last.ckpt. Name the run", "config"),
    (
        ["paths.output_dir=/dev/null/run"],
        r"paths.output_dir=/dev/null/run is not writable",
        "config",
    ),
    (
        ["paths.data_dir={tmp}/no-data"],
        r"MNIST is not in .*/no-data/MNIST/raw and could not be downloaded .* data.data_dir",
        "data",
    ),
]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST downloads fail at once, as they do on a machine without internet."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse)


@pytest.mark.parametrize(("overrides", "message", "where"), BAD_INPUTS)
def test_bad_input_gets_one_clear_message_before_any_work(
    compose_config: ComposeFn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_network: None,
    overrides: list[str],
    message: str,
    where: str,
) -> None:
    overrides = [override.replace("{tmp}", str(tmp_path)) for override in overrides]
    # No data here, so a check that came after the data is looked for would fail differently.
    cfg = compose_config(*overrides, "logger=none", data_dir=tmp_path / "no-data")
    for override in overrides:  # compose_config sets these two itself; the table wins
        key, _, value = override.partition("=")
        if key in ("paths.output_dir", "paths.data_dir"):
            cfg.paths[key.split(".")[1]] = value

    built: list[str] = []
    instantiate = attention_lab.run.training.instantiate

    def recording_instantiate(node: DictConfig, *args: Any, **kwargs: Any) -> Any:
        built.append(node._target_)
        return instantiate(node, *args, **kwargs)

    looked_for_data: list[bool] = []
    prepare_data = MNISTDataModule.prepare_data

    def recording_prepare_data(self: MNISTDataModule) -> None:
        looked_for_data.append(True)
        prepare_data(self)

    monkeypatch.setattr(attention_lab.run.training, "instantiate", recording_instantiate)
    monkeypatch.setattr(MNISTDataModule, "prepare_data", recording_prepare_data)
    with pytest.raises(AttentionLabError, match=message) as raised:
        train(cfg)

    assert len(str(raised.value).splitlines()) == 1  # one problem, one line
    if where == "config":
        assert built == []
    assert bool(looked_for_data) == (where == "data")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_every_config_problem_is_reported_at_once(compose_config: ComposeFn) -> None:
    cfg = compose_config("trainer.precision=8-bit", "seed=-1", "ckpt_path=nowhere.ckpt")
    with pytest.raises(ConfigError) as raised:
        train(cfg)
    lines = str(raised.value).splitlines()
    assert [line.split("=")[0] for line in lines] == ["seed", "trainer.precision", "ckpt_path"]


def test_triton_attention_on_the_cpu_is_refused_before_any_work(
    compose_config: ComposeFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attention_lab.nn import triton_flash

    if problem := triton_flash.available():
        pytest.skip(problem)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # conftest turns the interpreter on
    cfg = compose_config("model.attention=scratch_triton", "trainer.accelerator=cpu")
    with pytest.raises(ConfigError, match=r"scratch_triton runs a Triton kernel.*scratch_flash"):
        attention_lab.run.config.validate(cfg)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    attention_lab.run.config.validate(cfg)  # the interpreter runs it (slowly)


def test_a_learned_position_bias_with_triton_attention_is_refused_by_config(
    compose_config: ComposeFn,
) -> None:
    """The Triton kernel takes no mask gradient: refused before anything is built, triton or not."""
    cfg = compose_config(
        "experiment=ud_pos_transformer",
        "model.positional=relative",
        "model.attention=scratch_triton",
    )
    with pytest.raises(ConfigError, match=r"^model.positional=relative learns .*=scratch_flash"):
        attention_lab.run.config.validate(cfg)
    attention_lab.run.config.validate(compose_config("experiment=ud_pos_transformer"))


def test_full_disk_is_reported_at_start(
    compose_config: ComposeFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_usage = shutil.disk_usage

    def nearly_full(path: object) -> object:
        return real_usage(path)._replace(free=10 * 2**20)

    monkeypatch.setattr(attention_lab.run.config.shutil, "disk_usage", nearly_full)
    cfg = compose_config("logger=none")
    with pytest.raises(ConfigError, match=r"paths.output_dir=.* disk with 10 MiB free"):
        train(cfg)
