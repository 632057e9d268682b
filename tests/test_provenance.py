"""Every run's metrics.json says where it came from: machine, versions, git commit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import lightning
import torch

from attention_lab.run.provenance import describe_machine, git_state
from attention_lab.run.training import train
from tests.conftest import ComposeFn


def test_git_state_names_the_commit_and_a_dirty_tree(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    assert git_state(tmp_path) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path)["dirty"] is True


def test_outside_a_checkout_git_state_is_unknown(tmp_path: Path) -> None:
    assert git_state(tmp_path / "nowhere") == {"commit": None, "dirty": None}


def test_machine_line_prefers_the_gpu() -> None:
    cpu = {"cpu": "AMD EPYC", "cpu_cores": 8, "cpu_cores_usable": 2, "gpus": []}
    assert describe_machine(cpu) == "AMD EPYC, 2 cores"
    assert (
        describe_machine({**cpu, "load_avg_15min": 9.5}) == "AMD EPYC, 2 cores (shared: load 9.5)"
    )
    assert describe_machine({**cpu, "gpus": ["NVIDIA H100", "NVIDIA H100"]}) == "2× NVIDIA H100"


def test_a_run_writes_its_provenance(compose_config: ComposeFn, tiny_mnist: Path) -> None:
    cfg = compose_config(
        "debug=fast_dev_run", "logger=none", "data.val_size=56", data_dir=tiny_mnist
    )
    train(cfg)
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["provenance"]
    assert torch.__version__.startswith(written["versions"]["torch"])  # "2.x.y" of "2.x.y+cpu"
    assert written["versions"]["lightning"] == lightning.__version__
    assert written["machine"]["cpu_cores"] >= 1
    assert len(written["git"]["commit"] or "0" * 40) == 40
