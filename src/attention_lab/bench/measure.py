"""What every benchmark measures with: the median time of a step, the bytes autograd saves for
backward, and the median of a measurement over repeats."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch.utils import benchmark

# What ``--dtypes`` and ``--precision`` name: None is fp32 (no autocast).
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def median_time(step: Callable[[], None], min_time_s: float) -> float:
    """Median seconds per call, by ``torch.utils.benchmark.Timer`` over about ``min_time_s``:
    it warms up, synchronises a GPU around each block of calls, and times blocks of calls
    rather than single ones. On this process's threads (the Timer's own default is one)."""
    timer = benchmark.Timer(
        stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()
    )
    return timer.blocked_autorange(min_run_time=min_time_s).median


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs: each storage once,
    however many operations save it or views of it (the memory the saved tensors hold)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def summarise(
    rows: list[dict],
    keys: tuple[str, ...],
    value: str,
    statistic: Callable[[list[float]], float] = statistics.median,
) -> dict[tuple, float]:
    """``statistic`` (the median unless told) of ``value`` over the rows of each ``keys`` group."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row[value])
    return {k: statistic(v) for k, v in groups.items()}
