"""Compile the scratch_triton kernels for a Hopper GPU (sm_90) on a machine without one.

Run by tests/test_triton_flash.py in a subprocess without TRITON_INTERPRET (the kernels must be
JIT functions, not interpreted ones). For each setting it launches ``triton_flash_attention``
forward and backward with the launches replaced by ``triton.compile`` for sm_90, and prints one
JSON line per kernel: its name, the setting, and the on-chip (shared) memory a program needs.
The binding of arguments uses Triton internals (3.x); when they are missing it exits with 3.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.compiler import compile as triton_compile
    from triton.runtime.jit import create_function_from_signature
except ImportError as error:  # another Triton version
    print(f"Triton internals not found: {error}", file=sys.stderr)
    sys.exit(3)

from attention_lab.nn import triton_flash

TARGET = GPUTarget("cuda", 90, 32)
BACKEND = make_backend(TARGET)
SETTINGS = [  # dtype, head size, causal, mask, dropout, blocks: the largest program of each path
    ("float16", 128, True, "padding", 0.1, None),
    ("bfloat16", 256, False, "float", 0.1, None),
    ("float32", 128, True, "padding", 0.0, None),
    ("float32", 256, False, None, 0.0, None),
    ("bfloat16", 64, True, "padding", 0.1, (128, 64)),  # blocks tuned kernels take at d = 64
]


class _Compile:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` compiles instead of launching."""

    def __init__(self, kernel, setting: tuple) -> None:
        self.kernel, self.setting = kernel, setting

    def __getitem__(self, grid):
        def compile_for_hopper(*args, **kwargs) -> None:
            kernel = self.kernel
            binder = create_function_from_signature(kernel.signature, kernel.params, BACKEND)
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = kernel._pack_args(
                BACKEND, kwargs, bound, specialization, options
            )
            source = ASTSource(kernel, signature, constexprs, attrs)
            compiled = triton_compile(source, target=TARGET, options=options.__dict__)
            line = {"kernel": kernel.__name__, "setting": self.setting}
            print(json.dumps(line | {"shared_bytes": compiled.metadata.shared}), flush=True)

        return compile_for_hopper


def main() -> None:
    kernels = {
        name: getattr(triton_flash, name)
        for name in ("_forward", "_backward_dk_dv", "_backward_dq")
    }
    triton_flash.interpreted = lambda: True  # the tensors stay on the CPU: nothing is launched
    for dtype_name, head_dim, causal, mask_kind, dropout, blocks in SETTINGS:
        setting = [dtype_name, head_dim, causal, mask_kind, dropout, blocks]
        for name, kernel in kernels.items():
            setattr(triton_flash, name, _Compile(kernel, setting))
        dtype = getattr(torch, dtype_name)
        q, k, v = (
            torch.randn(2, 3, length, head_dim, dtype=dtype, requires_grad=True)
            for length in (100, 130, 130)
        )
        mask = {
            None: None,
            "padding": torch.rand(2, 1, 1, 130) > 0.3,
            "float": torch.randn(2, 3, 100, 130),
        }[mask_kind]
        out = triton_flash.triton_flash_attention(
            q, k, v, mask, causal=causal, dropout_p=dropout, seed=1,
            block_q=blocks and blocks[0], block_k=blocks and blocks[1],
        )  # fmt: skip
        out.backward(torch.randn_like(out))


if __name__ == "__main__":
    main()
