"""Random generator states in checkpoints: a resumed run draws what an unbroken one would."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGStateCheckpoint(L.Callback):
    """Save the Python, NumPy and torch (CPU and CUDA) generator states; restore them on resume.

    Lightning restores weights, optimiser, scheduler and loop counters but not these generators.
    Without them a resumed run shuffles its batches and draws its dropout masks differently from
    the run it continues. The states are stored as tensors, ints and lists, so the checkpoint
    still loads with ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        bit_generator, key, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": [bit_generator, key.tolist(), position, has_gauss, cached_gaussian],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        bit_generator, key, position, has_gauss, cached_gaussian = state_dict["numpy"]
        np.random.set_state(
            (bit_generator, np.array(key, dtype=np.uint32), position, has_gauss, cached_gaussian)
        )
        torch.set_rng_state(state_dict["torch"])
        cuda_states = state_dict["cuda"]
        # A run resumed on other hardware keeps its fresh CUDA states rather than fail.
        if (
            cuda_states
            and torch.cuda.is_available()
            and len(cuda_states) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(cuda_states)
