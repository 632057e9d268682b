"""A run's records survive every resume and every refused command (attention_lab.run.attempts).

The configs of every command, the per-epoch logs after a stop and resume, one message for an
output folder that cannot be written, and what extending a finished run does to its schedule.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
from omegaconf import OmegaConf

from attention_lab.errors import TrainingInterrupted
from attention_lab.optim import WarmupCosine
from attention_lab.run.attempts import ATTEMPTS_DIR, read_attempts
from attention_lab.run.checkpoints import LAST_CHECKPOINT
from attention_lab.run.records import METRICS_FILE, load_run, read_history
from attention_lab.run.training import train
from tests.conftest import run_train_py
from tests.test_reliability import TINY, _config, _config_with_sigterm_in_validation
from tests.wandb_records import read_offline_run

TIMINGS = ("train/samples_per_s",)  # the only values that differ between identical runs

# --- Per-epoch records after a stop and resume --------------------------------------------

TWO_EPOCHS = (
    *TINY,
    "trainer.deterministic=true",
    "trainer.max_epochs=2",
    "task.optimizer.lr=0.01",
    "trainer.log_every_n_steps=1",
    "logger=[csv,wandb]",
    "callbacks.attention_maps=null",  # images: not per-epoch numbers
)


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline, its settings and caches in ``tmp_path``."""
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home"))


def _train_and_finish(cfg: Any) -> None:
    """``train``, then close the W&B run as ``train.py`` does, even when training stops."""
    exit_code = 1
    try:
        train(cfg)
        exit_code = 0
    except TrainingInterrupted as err:
        exit_code = err.exit_code
        raise
    finally:
        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def _without_timings(row: dict[str, Any]) -> dict[str, Any]:
    """The row without timings, nor W&B's own keys (_step, _runtime, _timestamp)."""
    return {k: v for k, v in row.items() if k not in TIMINGS and not k.startswith("_")}


def _per_epoch_records(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """What every log of the run holds, timings left out: CSV rows (empty cells dropped),
    history.jsonl rows and the history of all the W&B run's offline files, in order."""
    with (run_dir / "csv" / "metrics.csv").open(newline="") as file:
        csv_rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(file)]
    wandb_rows = [
        row
        for offline in sorted((run_dir / "wandb").glob("offline-run-*"))
        for row in read_offline_run(offline)["history"]
    ]
    return {
        "csv": [_without_timings(row) for row in csv_rows],
        "history": [_without_timings(row) for row in read_history(run_dir)],
        "wandb": [_without_timings(row) for row in wandb_rows],
    }


def test_stop_during_validation_and_resume_keeps_every_epoch_once_in_every_log(
    tiny_mnist: Path, tmp_path: Path, wandb_offline: None
) -> None:
    unbroken = tmp_path / "unbroken"
    _train_and_finish(_config(unbroken, tiny_mnist, *TWO_EPOCHS))

    stopped = tmp_path / "stopped"
    interrupted = _config_with_sigterm_in_validation(stopped, tiny_mnist, *TWO_EPOCHS)
    with pytest.raises(TrainingInterrupted) as stop:
        _train_and_finish(interrupted)
    assert (stop.value.epoch, stop.value.step) == (0, 2)
    _train_and_finish(_config(stopped, tiny_mnist, *TWO_EPOCHS, "ckpt_path=last"))

    expected, resumed = _per_epoch_records(unbroken), _per_epoch_records(stopped)
    assert [row["epoch"] for row in resumed["history"]] == [0, 1]
    assert len(list((stopped / "wandb").glob("offline-run-*"))) == 2
    for log in ("csv", "history", "wandb"):
        assert resumed[log] == expected[log], log


def test_stop_during_the_last_validation_records_the_epoch_and_resumes_to_the_test(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    overrides = (*TINY, "logger=none", "callbacks.attention_maps=null", "trainer.max_epochs=1")
    with pytest.raises(TrainingInterrupted) as stop:
        train(_config_with_sigterm_in_validation(tmp_path, tiny_mnist, *overrides))
    assert (stop.value.epoch, stop.value.step) == (0, 2)
    assert [row["epoch"] for row in read_history(tmp_path)] == [0]
    assert not (tmp_path / METRICS_FILE).exists()  # stopped before the test

    metrics = train(_config(tmp_path, tiny_mnist, *overrides, "ckpt_path=last"))
    assert (metrics["epochs"], metrics["steps"]) == (1, 2) and metrics["test"]
    assert [row["epoch"] for row in read_history(tmp_path)] == [0]  # nothing trained again


# --- Extending a finished run ---------------------------------------------------------------

ONE_EPOCH = (*TINY, "logger=none", "callbacks.attention_maps=null", "trainer.max_epochs=1")


def test_extending_a_finished_run_replans_the_schedule_over_the_new_length(
    tiny_mnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lrs = tmp_path / "lrs.jsonl"
    record_lr = (
        "+callbacks.lrs._target_=tests.callbacks.RecordLearningRate",
        f"+callbacks.lrs.path={lrs}",
    )
    train(_config(tmp_path / "run", tiny_mnist, *ONE_EPOCH, *record_lr))
    with caplog.at_level("WARNING"):
        train(
            _config(
                tmp_path / "run",
                tiny_mnist,
                *ONE_EPOCH,
                *record_lr,
                "trainer.max_epochs=2",
                "ckpt_path=last",
            )
        )
    # Two batches an epoch: the schedule of a 2-epoch run has 4 steps, its warm-up 1.
    replanned = WarmupCosine(warmup_steps=1, total_steps=4, min_lr_ratio=0.01)
    base_lr = 2e-3
    rows = [json.loads(line) for line in lrs.read_text().splitlines()]
    steps = {row["step"]: row["lr"] for row in rows}
    assert sorted(steps) == [0, 1, 2, 3]
    assert [steps[2], steps[3]] == pytest.approx([base_lr * replanned(2), base_lr * replanned(3)])
    assert steps[2] > 0.5 * base_lr  # not the floor (0.01 × lr) of the 1-epoch plan
    saved = torch.load(
        tmp_path / "run" / "checkpoints" / LAST_CHECKPOINT, map_location="cpu", weights_only=True
    )
    assert saved["lr_schedulers"][0]["lr_lambdas"][0]["total_steps"] == 4
    assert "re-planned over 4 steps" in caplog.text and "trainer.max_epochs" in caplog.text


# --- Refused commands and resumes in a run directory --------------------------------------

FIRST = (*TINY, "logger=csv", "trainer.max_epochs=1")


def _files(run_dir: Path) -> dict[str, str]:
    """The sha256 of every file in ``run_dir`` but the attempt records."""
    return {
        path.relative_to(run_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and not path.relative_to(run_dir).as_posix().startswith(ATTEMPTS_DIR)
    }


def test_refused_commands_change_nothing_and_every_attempt_is_recorded(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    where = f"hydra.run.dir={run_dir}"
    first = run_train_py(*FIRST, where, data_dir=tiny_mnist, home=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    before = _files(run_dir)

    refusals = [
        ("data.batch_size=-1", "data.batch_size=-1 and data.eval_batch_size=512 must be positive"),
        ("model.d_model=32", "does not fit this model"),
    ]
    for override, message in refusals:
        result = run_train_py(
            *FIRST, override, "ckpt_path=last", where, data_dir=tiny_mnist, home=tmp_path
        )
        output = result.stdout + result.stderr
        assert result.returncode == 2 and message in output, output
        assert "Traceback" not in output
        assert _files(run_dir) == before, override  # config, log, metrics: all as they were

    attempts = read_attempts(run_dir)
    assert [attempt["outcome"] for attempt in attempts] == ["finished", "refused", "refused"]
    refused = run_dir / attempts[1]["record"]
    assert OmegaConf.load(refused / "config.yaml").data.batch_size == -1
    assert "data.batch_size=-1" in json.loads((refused / "outcome.json").read_text())["error"]
    assert "must be positive" in (refused / "train.log").read_text()

    # Extending the run: a started attempt, recorded beside the run's first config.
    extended = run_train_py(
        *FIRST, "trainer.max_epochs=2", "ckpt_path=last", where, data_dir=tiny_mnist, home=tmp_path
    )
    output = extended.stdout + extended.stderr
    assert extended.returncode == 0, output
    assert "re-planned over 4 steps" in output  # the schedule, see optim.WarmupCosineLR
    assert _files(run_dir)[".hydra/config.yaml"] == before[".hydra/config.yaml"]
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_epochs == 1
    attempts = read_attempts(run_dir)
    assert [attempt["outcome"] for attempt in attempts][-1] == "finished" and len(attempts) == 4
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    assert metrics["epochs"] == 2
    assert metrics["config"] == f"{attempts[-1]['record']}/config.yaml"
    report_run = load_run(run_dir)
    assert report_run.config == run_dir / metrics["config"]
    assert OmegaConf.load(report_run.config).trainer.max_epochs == 2
    assert "re-planned" in (run_dir / "train.log").read_text()


# --- Output folders that cannot be written ------------------------------------------------


@pytest.fixture(params=["chmod 500", "chattr +i"])
def read_only_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A folder nobody may write in: chmod 500 (not for root), or immutable (chattr +i)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if request.param == "chmod 500":
        folder.chmod(0o500)
        request.addfinalizer(lambda: folder.chmod(0o700))
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not allowed here (needs root and a filesystem that has it)")
    else:
        request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
    if os.access(folder, os.W_OK) and request.param == "chmod 500":
        pytest.skip("root writes in a chmod 500 folder anyway")
    return folder


def _assert_one_message(result: subprocess.CompletedProcess, setting: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert output.count("is not writable") == 1, output
    assert f"{setting} is not writable" in output, output


@pytest.mark.parametrize(
    "overrides",
    [
        ["paths.output_dir=/dev/null/run", "hydra.run.dir={tmp}/hydra"],
        ["hydra.run.dir=/dev/null/run"],
        ["hydra.run.dir=/proc/forbidden"],
    ],
)
def test_unwritable_output_folder_is_one_message(
    tiny_mnist: Path, tmp_path: Path, overrides: list[str]
) -> None:
    overrides = [override.format(tmp=tmp_path) for override in overrides]
    result = run_train_py(*TINY, *overrides, data_dir=tiny_mnist, home=tmp_path)
    _assert_one_message(result, overrides[0])


def test_read_only_run_folder_is_one_message(
    tiny_mnist: Path, tmp_path: Path, read_only_dir: Path
) -> None:
    result = run_train_py(
        *TINY, f"hydra.run.dir={read_only_dir}", data_dir=tiny_mnist, home=tmp_path
    )
    _assert_one_message(result, f"hydra.run.dir={read_only_dir}")


def test_read_only_sweep_folder_is_one_message(
    tiny_mnist: Path, tmp_path: Path, read_only_dir: Path
) -> None:
    sweep = read_only_dir / "sweep"
    result = run_train_py(
        "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}", data_dir=tiny_mnist, home=tmp_path
    )
    _assert_one_message(result, f"hydra.sweep.dir={sweep}")
