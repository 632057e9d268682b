"""Runs that can be stopped, resumed and repeated without losing anything.

Determinism and resumption run in-process on a tiny model; interruption by a real signal and
the hygiene of the run directory go through ``python train.py`` as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from attention_lab.errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from attention_lab.loggers import RUN_ID_FILE
from attention_lab.run.attempts import read_attempts
from attention_lab.run.checkpoints import LAST_CHECKPOINT
from attention_lab.run.records import METRICS_FILE
from attention_lab.run.training import train
from attention_lab.tasks import ImageClassificationTask
from tests.conftest import CONF_DIR, REPO_ROOT, train_py_env
from tests.wandb_records import read_offline_run

# A model small enough that an epoch of the tiny data set (two batches) takes milliseconds.
TINY = (
    "model.d_model=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.d_ff=32",
    "data.val_size=56",
    "trainer.accelerator=cpu",
)
# lr=0.01: the best epoch is a later one, so the compared test metrics depend on every epoch.
DETERMINISTIC = (
    *TINY,
    "trainer.deterministic=true",
    "trainer.max_epochs=3",
    "task.optimizer.lr=0.01",
    "logger=none",
)


def _config(run_dir: Path, data_dir: Path, *overrides: str) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, writing into ``run_dir``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.data_dir = str(data_dir)
    return cfg


def _config_with_sigterm_in_validation(
    run_dir: Path, data_dir: Path, *overrides: str
) -> DictConfig:
    """``_config``, and a SIGTERM that the run sends itself when epoch 0's validation ends."""
    cfg = _config(run_dir, data_dir, *overrides)
    with open_dict(cfg):
        cfg.callbacks.signal = {
            "_target_": "tests.callbacks.SignalDuringValidation",
            "epoch": 0,
            "signum": int(signal.SIGTERM),
        }
    return cfg


def _comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the timings (wall time, samples/s) and the provenance (machine, load,
    finish time), and with the best checkpoint's file name only: everything a seed decides."""
    not_decided_by_the_seed = ("fit_time_s", "train_samples_per_s", "provenance")
    kept = {key: value for key, value in metrics.items() if key not in not_decided_by_the_seed}
    kept["best_checkpoint"] = Path(metrics["best_checkpoint"]).name
    return kept


def _metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / METRICS_FILE).read_text())


def _last_checkpoint(run_dir: Path) -> dict[str, Any]:
    checkpoint = run_dir / "checkpoints" / LAST_CHECKPOINT
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def _assert_same_training_state(first: Path, second: Path) -> None:
    """Weights, optimiser moments, schedule, counters and random states are all equal."""
    ours, theirs = _last_checkpoint(first), _last_checkpoint(second)
    assert (ours["epoch"], ours["global_step"]) == (theirs["epoch"], theirs["global_step"])
    assert ours["lr_schedulers"] == theirs["lr_schedulers"]
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for key, value in ours["state_dict"].items():
        assert torch.equal(value, theirs["state_dict"][key]), f"weights differ: {key}"
    moments = zip(
        ours["optimizer_states"][0]["state"].values(),
        theirs["optimizer_states"][0]["state"].values(),
        strict=True,
    )
    for mine, other in moments:
        assert all(torch.equal(mine[key], other[key]) for key in ("exp_avg", "exp_avg_sq"))
    rng, other_rng = (c["callbacks"]["RNGStateCheckpoint"] for c in (ours, theirs))
    assert torch.equal(rng["torch"], other_rng["torch"]) and rng["python"] == other_rng["python"]


@pytest.fixture(scope="module")
def unbroken_run(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: Path) -> Path:
    """A deterministic three-epoch run on CPU, the reference the other runs must match."""
    run_dir = tmp_path_factory.mktemp("unbroken")
    train(_config(run_dir, tiny_mnist, *DETERMINISTIC))
    return run_dir


# --- Repeat and resume ---------------------------------------------------------------------


def test_same_seed_gives_identical_metrics(
    unbroken_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    again = train(_config(tmp_path, tiny_mnist, *DETERMINISTIC))
    assert _comparable(again) == _comparable(_metrics(unbroken_run))
    _assert_same_training_state(tmp_path, unbroken_run)


def test_interrupted_run_resumes_to_identical_metrics(
    unbroken_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    # SIGTERM during epoch 0's validation: the run stops at the end of that epoch.
    interrupted = _config_with_sigterm_in_validation(tmp_path, tiny_mnist, *DETERMINISTIC)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(interrupted)
    assert (stopped.value.exit_code, stopped.value.epoch, stopped.value.step) == (143, 0, 2)
    assert not (tmp_path / METRICS_FILE).exists()
    assert (tmp_path / "checkpoints" / "epoch000.ckpt").is_file()  # saved before the stop

    resumed = train(_config(tmp_path, tiny_mnist, *DETERMINISTIC, "ckpt_path=last"))
    assert _comparable(resumed) == _comparable(_metrics(unbroken_run))
    _assert_same_training_state(tmp_path, unbroken_run)


def test_a_signal_in_an_epochs_last_batch_stops_after_that_epochs_validation(
    unbroken_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    # Saved in its last batch, the epoch would count as done on resume and never be validated.
    cfg = _config_recording_batches(tmp_path, tiny_mnist, *DETERMINISTIC, stop_at=(0, 1))
    with pytest.raises(TrainingInterrupted) as stopped:
        train(cfg)
    assert (stopped.value.epoch, stopped.value.step) == (0, 2)  # two batches an epoch
    assert (tmp_path / "checkpoints" / "epoch000.ckpt").is_file()  # validated, then saved

    resumed = train(_config(tmp_path, tiny_mnist, *DETERMINISTIC, "ckpt_path=last"))
    assert _comparable(resumed) == _comparable(_metrics(unbroken_run))
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(row["epoch"], "val/acc" in row) for row in history] == [
        (0, True),
        (1, True),
        (2, True),
    ]
    _assert_same_training_state(tmp_path, unbroken_run)


# Several batches an epoch, dropout, augmentation (MNIST) and word dropout (UD): every draw
# that a resume could change. The signal arrives as batch 3 of epoch 1 starts, so the run saves
# after that batch and the resumed one has batches 4 on of epoch 1 left.
MID_EPOCH = {
    "mnist": ("data.batch_size=32", "data.augment={degrees:10,translate:0.1,scale:[0.9,1.1]}"),
    "ud": ("experiment=ud_pos_transformer", "data.vocab_size=100", "data.batch_size=32"),
}


def _config_recording_batches(
    run_dir: Path, data_dir: Path, *overrides: str, stop_at: tuple[int, int] | None = None
) -> DictConfig:
    """``_config`` that writes each training batch's fingerprint to ``run_dir/batches.jsonl``
    and, with ``stop_at=(epoch, batch)``, sends itself SIGTERM as that batch starts."""
    cfg = _config(run_dir, data_dir, *overrides)
    with open_dict(cfg):
        path = str(run_dir / "batches.jsonl")
        cfg.callbacks.batches = {"_target_": "tests.callbacks.RecordBatches", "path": path}
        if stop_at is not None:
            cfg.callbacks.signal = {
                "_target_": "tests.callbacks.SignalDuringTraining",
                "epoch": stop_at[0],
                "batch": stop_at[1],
                "signum": int(signal.SIGTERM),
            }
    return cfg


def _batches(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "batches.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("data", sorted(MID_EPOCH))
def test_a_run_stopped_mid_epoch_resumes_on_the_batches_it_had_left(
    data: str, tiny_mnist: Path, tiny_ud: Path, tmp_path: Path
) -> None:
    data_dir = tiny_mnist if data == "mnist" else tiny_ud
    overrides = [o for o in DETERMINISTIC if data == "mnist" or "val_size" not in o]
    overrides += MID_EPOCH[data]
    unbroken = tmp_path / "unbroken"
    train(_config_recording_batches(unbroken, data_dir, *overrides))
    order = _batches(unbroken)
    per_epoch = len(order) // 3
    assert per_epoch >= 6
    # Each epoch has its own order (Lightning sets the epoch of the batch sampler's sampler).
    epoch0, epoch1 = order[:per_epoch], order[per_epoch : 2 * per_epoch]
    assert [b["sums"] for b in epoch0] != [b["sums"] for b in epoch1]

    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted) as stop:
        train(_config_recording_batches(stopped, data_dir, *overrides, stop_at=(1, 3)))
    assert (stop.value.epoch, stop.value.step) == (1, per_epoch + 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(_config_recording_batches(stopped, data_dir, *overrides, "ckpt_path=last"))
    # Lightning's warning that a mid-epoch resume may be unreliable does not apply here.
    assert not [w for w in caught if "ended before the epoch ended" in str(w.message)]

    assert _batches(stopped) == order  # no batch trained twice, none left out, same order
    assert _comparable(resumed)["test"] == _comparable(_metrics(unbroken))["test"]
    _assert_same_training_state(stopped, unbroken)


def test_checkpoints_load_with_weights_only_and_carry_rng_state(unbroken_run: Path) -> None:
    checkpoint = torch.load(
        unbroken_run / "checkpoints" / LAST_CHECKPOINT, map_location="cpu", weights_only=True
    )
    rng = checkpoint["callbacks"]["RNGStateCheckpoint"]
    assert rng["torch"].dtype == torch.uint8 and len(rng["python"][1]) == 625
    assert checkpoint["hyper_parameters"] == {
        "num_classes": 10,
        "label_smoothing": 0.0,
        "divide_loss_by_batch_size": False,
    }


# --- Bad checkpoints -----------------------------------------------------------------------


def _mark(path: str) -> None:
    Path(path).touch()


class _Boobytrap:
    """Unpickling this object would create a file: proof of code run by torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return _mark, (str(self.marker),)


def _damage(kind: str, good: Path, bad: Path) -> None:
    if kind == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "not a checkpoint":
        bad.write_text("epoch: 3\n")
    elif kind == "bare state_dict":
        torch.save(torch.load(good, weights_only=True)["state_dict"], bad)
    elif kind == "pickled code":
        torch.save(
            {"state_dict": {}, "loops": {}, "extra": _Boobytrap(bad.with_suffix(".ran"))}, bad
        )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", r"is not a whole checkpoint file: .* \(cut short by an interrupted copy"),
        ("not a checkpoint", r"is not a whole checkpoint file"),
        ("bare state_dict", r"is not a Lightning training checkpoint"),
        ("pickled code", r"holds objects other than tensors and plain values"),
    ],
)
def test_damaged_checkpoint_is_a_clear_config_error(
    unbroken_run: Path, tiny_mnist: Path, tmp_path: Path, kind: str, message: str
) -> None:
    bad = tmp_path / "bad.ckpt"
    _damage(kind, unbroken_run / "checkpoints" / LAST_CHECKPOINT, bad)
    cfg = _config(tmp_path / "run", tiny_mnist, *TINY, "logger=none", f"ckpt_path={bad}")
    with pytest.raises(ConfigError, match=rf"^ckpt_path={re.escape(str(bad))} {message}"):
        train(cfg)
    assert not bad.with_suffix(".ran").exists()  # weights_only: nothing was executed
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoint_of_another_model_is_a_clear_config_error(
    unbroken_run: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    other = unbroken_run / "checkpoints" / LAST_CHECKPOINT
    cfg = _config(tmp_path, tiny_mnist, *TINY, "model.d_model=32", f"ckpt_path={other}")
    with pytest.raises(ConfigError, match=r"does not fit this model: .* of another shape"):
        train(cfg)


# --- Non-finite loss -------------------------------------------------------------------------


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    training_step = ImageClassificationTask.training_step

    def poisoned(self: ImageClassificationTask, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = training_step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 3 else loss

    monkeypatch.setattr(ImageClassificationTask, "training_step", poisoned)
    cfg = _config(tmp_path, tiny_mnist, *TINY, "logger=none", "trainer.max_epochs=3")
    with pytest.raises(NonFiniteLossError, match=r"^train/loss is nan at epoch 1 step 3"):
        train(cfg)
    last = torch.load(tmp_path / "checkpoints" / LAST_CHECKPOINT, weights_only=True)
    assert last["global_step"] == 2  # the end of epoch 0, before the loss went bad
    assert all(torch.isfinite(tensor).all() for tensor in last["state_dict"].values())


# --- python train.py: signals and secrets ----------------------------------------------------


def _train_py(*overrides: str, data_dir: Path, home: Path, **env: str) -> subprocess.Popen:
    """Start ``python train.py`` in its own process group, as a terminal would, with no W&B."""
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=REPO_ROOT,
        env=train_py_env(data_dir, home, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"train.py ended before {path} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.05)


SECRET = "secret-xyz"
# A W&B key and an unreachable server: the credentials path of loggers.wandb_mode, offline.
WANDB_ENV = {"WANDB_API_KEY": SECRET, "WANDB_BASE_URL": "http://127.0.0.1:9"}


def _interrupt(
    signum: signal.Signals, run_dir: Path, data_dir: Path, home: Path, *, group: bool
) -> tuple[re.Match, str]:
    """Start a slowed tiny run, signal it once its first checkpoint exists; check how it ends.

    Returns the match of the interruption message (epoch, step, checkpoint, resume command).
    """
    process = _train_py(
        *TINY,
        "trainer.max_epochs=3",
        "+callbacks.slow._target_=tests.callbacks.SlowDown",
        "+callbacks.slow.seconds=0.2",
        f"hydra.run.dir={run_dir}",
        data_dir=data_dir,
        home=home,
        **WANDB_ENV,
    )
    _wait_for(run_dir / "checkpoints" / LAST_CHECKPOINT, process)
    # Ctrl-C in a terminal signals the whole process group (W&B's service too); kill, the pid.
    os.killpg(process.pid, signum) if group else process.send_signal(signum)
    output, _ = process.communicate(timeout=120)

    assert process.returncode == 128 + signum, output
    assert "Traceback" not in output
    found = re.search(
        rf"Interrupted by {signum.name} at epoch (\d+) step (\d+); checkpoint saved to (\S+)\. "
        r"Resume with: (.+)",
        output,
    )
    assert found, output
    epoch, step, checkpoint, command = found.groups()
    assert Path(checkpoint) == run_dir / "checkpoints" / LAST_CHECKPOINT
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (int(epoch), int(step))
    words = shlex.split(command)
    assert words[:2] == ["python", "train.py"]
    assert words[-2:] == ["ckpt_path=last", f"hydra.run.dir={run_dir}"]
    # W&B was finished cleanly, with the exit code, so that its records are complete.
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    (wandb_run,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    assert read_offline_run(wandb_run)["exit_code"] == 128 + signum
    return found, output


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_into_the_same_wandb_run(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    found, _ = _interrupt(signal.SIGINT, run_dir, tiny_mnist, tmp_path, group=True)
    epoch, step, checkpoint, command = found.groups()

    resumed = _train_py(*shlex.split(command)[2:], data_dir=tiny_mnist, home=tmp_path, **WANDB_ENV)
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, output
    assert f"Resuming from {checkpoint} (epoch {epoch}, step {step})" in output
    assert (_metrics(run_dir)["epochs"], _metrics(run_dir)["steps"]) == (3, 6)
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and all(path.name.endswith(f"-{run_id}") for path in wandb_runs)
    history = read_offline_run(wandb_runs[-1])["history"]
    logged_steps = [row["trainer/global_step"] for row in history if "trainer/global_step" in row]
    assert min(logged_steps) >= int(step) and max(logged_steps) == 6  # continues, repeats none
    # The interruption's failure.json is superseded: moved into the finishing attempt's record.
    assert not (run_dir / "failure.json").exists()
    attempts = read_attempts(run_dir)
    assert [attempt["outcome"] for attempt in attempts] == ["interrupted", "finished"]
    superseded = json.loads(
        (run_dir / attempts[1]["record"] / "superseded_failure.json").read_text()
    )
    assert superseded["error"].startswith("TrainingInterrupted: Interrupted by SIGINT")

    # Hygiene: the W&B key in the environment is written nowhere in the run directory.
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, f"{SECRET} written to {leaks}"


def test_sigterm_saves_a_checkpoint_and_exits_143(tiny_mnist: Path, tmp_path: Path) -> None:
    _interrupt(signal.SIGTERM, tmp_path / "run", tiny_mnist, tmp_path, group=False)


def test_no_eval_exec_or_unsafe_torch_load_in_the_code() -> None:
    sources = [REPO_ROOT / "train.py", *(REPO_ROOT / "src").rglob("*.py")]
    for source in sources:
        text = source.read_text()
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), source
        assert "pickle.load" not in text, source
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{source}: {call}"
