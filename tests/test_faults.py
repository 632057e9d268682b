"""Faults of the machine lose nothing: a write cut short (a kill, a full disk) leaves the old file
whole, ``ckpt_path=last`` resumes from the newest checkpoint that loads, two commands cannot
write in one run directory at once, and a full disk ends a run with one line and exit status 2."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from attention_lab.cli.evaluate import evaluate
from attention_lab.errors import ConfigError, RunInUseError
from attention_lab.run.checkpoints import (
    LAST_CHECKPOINT,
    AtomicCheckpointIO,
    read_checkpoint,
    resolve_ckpt_path,
)
from attention_lab.run.lock import LOCK_FILE, run_lock
from attention_lab.run.records import remove_temporaries
from tests.conftest import REPO_ROOT, run_train_py, train_py_env


def _checkpoint(value: float, size: int = 1000) -> dict:
    """The smallest dict ``read_checkpoint`` takes for a Lightning training checkpoint."""
    return {"state_dict": {"w": torch.full((size,), value)}, "loops": {}, "epoch": int(value)}


def _value(path: Path) -> float:
    return float(read_checkpoint(path)["state_dict"]["w"][0])


# --- Atomic checkpoints ----------------------------------------------------------------------


def test_a_checkpoint_write_cut_short_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / LAST_CHECKPOINT
    io = AtomicCheckpointIO()
    io.save_checkpoint(_checkpoint(1.0), path)
    save = torch.save

    def full_disk(obj, handle) -> None:  # half the bytes reach the file, then ENOSPC
        save(obj, handle)
        handle.truncate(handle.tell() // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(_checkpoint(2.0), path)
    assert _value(path) == 1.0
    assert [p.name for p in path.parent.iterdir()] == [LAST_CHECKPOINT]  # no temporary left


KILLED_SAVER = """
import sys, torch
from pathlib import Path
from attention_lab.run.checkpoints import AtomicCheckpointIO
path, io = Path(sys.argv[1]), AtomicCheckpointIO()
for value in range(1, 10**6):  # 4 MB a save, over and over, until killed
    io.save_checkpoint({"state_dict": {"w": torch.full((10**6,), float(value))}, "loops": {}},
                       path)
    print(value, flush=True)
"""


@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.3, 0.8])
def test_sigkill_at_any_moment_of_a_save_leaves_a_loadable_checkpoint(
    tmp_path: Path, delay_s: float
) -> None:
    path = tmp_path / "checkpoints" / LAST_CHECKPOINT
    AtomicCheckpointIO().save_checkpoint(_checkpoint(0.0, size=10**6), path)
    env = train_py_env(tmp_path, tmp_path)
    saver = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVER, str(path)], env=env, stdout=subprocess.PIPE
    )
    assert saver.stdout is not None
    saver.stdout.readline()  # one whole save done: the next ones are under way
    time.sleep(delay_s)
    saver.send_signal(signal.SIGKILL)
    saver.wait(timeout=30)
    assert _value(path) >= 1.0  # a whole checkpoint: the old one or a newer one
    debris = remove_temporaries(path.parent)
    assert all(p.name.startswith(f".{LAST_CHECKPOINT}.") for p in debris)
    assert [p.name for p in path.parent.iterdir()] == [LAST_CHECKPOINT]


# --- ckpt_path=last after a torn file --------------------------------------------------------


def test_ckpt_path_last_resumes_from_the_newest_checkpoint_that_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    for value, name in ((0.0, "epoch000.ckpt"), (1.0, "epoch001.ckpt")):
        io.save_checkpoint(_checkpoint(value), folder / name)
        time.sleep(0.01)  # distinct modification times, epoch001 the newer
    whole = (folder / "epoch001.ckpt").read_bytes()
    (folder / "epoch002.ckpt").write_bytes(whole[: len(whole) // 2])  # torn, as before #33
    (folder / LAST_CHECKPOINT).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert resolve_ckpt_path("last", folder) == folder / "epoch001.ckpt"
    assert "resuming from" in caplog.text and "epoch001.ckpt" in caplog.text
    assert "last.ckpt: ckpt_path=" in caplog.text and "epoch002.ckpt: ckpt_path=" in caplog.text
    for name in ("epoch000.ckpt", "epoch001.ckpt"):
        (folder / name).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"^ckpt_path=last: no checkpoint in .* loads"):
        resolve_ckpt_path("last", folder)


# --- One writer per run directory ------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from attention_lab.run.lock import run_lock
with run_lock(Path(sys.argv[1]), "hydra.run.dir"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held_run(tmp_path: Path):
    """A run directory whose lock a live process holds; yields (folder, that process)."""
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        env=train_py_env(tmp_path, tmp_path),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    yield folder, holder
    holder.kill()
    holder.wait(timeout=30)


def test_a_second_command_on_a_locked_run_is_refused_naming_the_process(held_run) -> None:
    folder, holder = held_run
    with (
        pytest.raises(RunInUseError, match=rf"in use by process {holder.pid} .*hydra.run.dir"),
        run_lock(folder, "hydra.run.dir"),
    ):
        pytest.fail("the lock was taken twice")
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == holder.pid  # still theirs


def test_a_stale_lock_is_taken_over_and_released(held_run) -> None:
    folder, holder = held_run
    holder.kill()  # SIGKILL: its lock stays behind, naming a process that is gone
    holder.wait(timeout=30)
    with run_lock(folder, "hydra.run.dir"):
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_FILE).exists()


def test_train_py_on_a_run_in_use_exits_2_with_one_line(
    held_run, tiny_mnist: Path, tmp_path: Path
) -> None:
    folder, holder = held_run
    result = run_train_py(
        "trainer.max_epochs=1",
        "logger=csv",
        f"hydra.run.dir={folder}",
        data_dir=tiny_mnist,
        home=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f"in use by process {holder.pid}" in errors[0]
    assert not (folder / "checkpoints").exists()


# --- A full disk -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 260 MiB tmpfs: room for the 200 MiB ``train.py`` asks to find free (skipped where this
    machine may not mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=260m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill_after_first_checkpoint(disk: Path, checkpoints: Path, filler: Path) -> None:
    """Once a checkpoint exists, fill ``disk`` up to less than half a checkpoint's room."""
    while not list(checkpoints.glob("*.ckpt")):
        time.sleep(0.01)
    size = max(path.stat().st_size for path in checkpoints.glob("*.ckpt"))
    with filler.open("wb") as handle:
        while (room := shutil.disk_usage(disk).free - size // 2) > 0:
            handle.write(b"\0" * min(room, 2**24))
            handle.flush()


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_one_line_and_the_resume_command_works(
    small_disk: Path, tiny_mnist: Path, tmp_path: Path
) -> None:
    run_dir, filler = small_disk / "run", small_disk / "filler"
    filling = threading.Thread(
        target=_fill_after_first_checkpoint, args=(small_disk, run_dir / "checkpoints", filler)
    )
    filling.start()
    full = run_train_py(
        "trainer.accelerator=cpu",
        "data.val_size=56",
        "model.d_model=16",
        "model.n_heads=2",
        "model.d_ff=32",
        "trainer.max_epochs=6",
        f"hydra.run.dir={run_dir}",
        data_dir=tiny_mnist,
        home=tmp_path,
    )
    filling.join(timeout=60)
    output = full.stdout + full.stderr
    assert full.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, output[-3000:]
    assert f"The disk holding {run_dir}" in errors[0] and "MiB free" in errors[0]
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    for path in checkpoints:  # nothing torn, no temporary left
        assert path.suffix == ".ckpt" and read_checkpoint(path), path
    stopped_at = read_checkpoint(run_dir / "checkpoints" / LAST_CHECKPOINT)["epoch"]
    assert stopped_at < 5

    filler.unlink()
    resume = errors[0].split("resume with: ", 1)[1].split()
    assert resume[:2] == ["python", "train.py"] and "ckpt_path=last" in resume
    resumed = subprocess.run(
        [sys.executable, *resume[1:]],
        cwd=REPO_ROOT,
        env=train_py_env(tiny_mnist, tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 6 and metrics["test"]["test/acc"] > 0


def test_evaluate_into_a_run_still_training_is_refused_naming_the_process(held_run) -> None:
    folder, holder = held_run
    ckpt = folder / "checkpoints" / "epoch000.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not read: refused before")
    with pytest.raises(
        RunInUseError, match=rf"in use by process {holder.pid} .*choose another out"
    ):
        evaluate(ckpt)
    assert not (folder / "evaluate-epoch000").exists()
