"""``run.records``: the one owner of a run's metrics.json, failure.json and history.jsonl writes
them atomically, and keeps checkpoint paths relative to the run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from attention_lab.run import records


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (ENOSPC) after half the bytes: metrics.json is still the old one, whole."""
    records.write_metrics(tmp_path, {"test": {"test/acc": 0.5}, "best_checkpoint": None})
    old = (tmp_path / records.METRICS_FILE).read_text()

    def half_then_full_disk(fd: int) -> None:  # the write reaches the disk cut in half
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", half_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        records.write_metrics(tmp_path, {"test": {"test/acc": 0.9}, "best_checkpoint": None})
    monkeypatch.undo()
    assert (tmp_path / records.METRICS_FILE).read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [records.METRICS_FILE]


def test_history_rows_are_appended_whole(tmp_path: Path, monkeypatch) -> None:
    records.append_history(tmp_path, {"epoch": 0, "val/acc": 0.5})
    monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        records.append_history(tmp_path, {"epoch": 1, "val/acc": 0.6})
    monkeypatch.undo()
    records.append_history(tmp_path, {"epoch": 1, "val/acc": 0.7})
    assert records.read_history(tmp_path) == [
        {"epoch": 0, "val/acc": 0.5},
        {"epoch": 1, "val/acc": 0.7},
    ]
    assert [p.name for p in tmp_path.iterdir()] == [records.HISTORY_FILE]


def test_checkpoint_paths_are_relative_to_the_run(tmp_path: Path) -> None:
    inside = tmp_path / "checkpoints" / "epoch003.ckpt"
    records.write_metrics(tmp_path, {"best_checkpoint": str(inside), "test": {}})
    written = json.loads((tmp_path / records.METRICS_FILE).read_text())
    assert written["best_checkpoint"] == "checkpoints/epoch003.ckpt"
    assert records.relative_to_run("/elsewhere/x.ckpt", tmp_path) == "/elsewhere/x.ckpt"
    assert records.relative_to_run(None, tmp_path) is None


def test_a_failure_record_that_cannot_be_written_is_left_out(tmp_path: Path) -> None:
    """The error has been reported; failure.json itself must not be what fails."""
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    records.record_failure(blocked / "run", RuntimeError("disk gone"))  # no exception
    records.record_failure(tmp_path, RuntimeError("boom"))
    assert records.read_failure(tmp_path) == "RuntimeError: boom"
