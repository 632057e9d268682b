"""The kernel benchmark: one multi-head attention layer, forward and backward, per attention kind
(``python -m attention_lab.cli.bench attention``), and the block sizes of our FlashAttention
(``flash-blocks``).

Memory is the peak allocated on a GPU; on the CPU, where no allocator reports a peak, the bytes
autograd saves for the backward pass (exact, and the part that differs between kinds: the
explicit path keeps the (B, H, T, S) weights). ``nn.MultiheadAttention`` gets the causal mask
with its ``is_causal`` hint; ours get ``is_causal`` alone. ``--sdpa-backends flash efficient``
adds ``scratch_fused`` held to each of PyTorch's backends: the kernels to measure our
FlashAttention (``scratch_flash``, ``scratch_triton``) against.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attention_lab.bench.measure import DTYPES, median_time, saved_bytes, summarise
from attention_lab.nn import triton_flash
from attention_lab.nn.attention import (
    KERNEL_OF_KIND,
    MultiHeadAttention,
    build_attention,
    causal_mask,
)

SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def _attention_forward(
    layer: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    autocast: torch.dtype | None,
    causal: bool,
) -> torch.Tensor:
    masks = {}
    if causal:  # nn.MultiheadAttention takes is_causal only as a hint beside the mask itself
        masks["is_causal"] = True
        if isinstance(layer, nn.MultiheadAttention):
            masks["attn_mask"] = ~causal_mask(x.size(1), device=x.device)  # (T, T), True = ignore
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        return layer(x, x, x, need_weights=False, **masks)[0]  # (B, T, E)


def _attention_entries(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """(row name, attention kind, SDPA backend or None): the kinds, then ``scratch_fused`` held
    to each of ``--sdpa-backends`` (``scratch_fused[flash]``: PyTorch's FlashAttention kernel
    behind our projections, the comparison for scratch_flash and scratch_triton)."""
    entries = [(kind, kind, None) for kind in args.kinds]
    return entries + [(f"scratch_fused[{b}]", "scratch_fused", b) for b in args.sdpa_backends]


def _attention_step(forward: Callable[[], torch.Tensor]) -> None:
    forward().float().square().mean().backward()


def bench_attention(args: argparse.Namespace) -> list[dict]:
    """One attention layer, forward + backward, per kind, mask, dtype and sequence length."""
    device = torch.device(args.device)
    rows = []
    for dtype_name in args.dtypes:
        for mask in args.masks:
            for seq_len in args.seq_lens:
                x = torch.randn(args.batch, seq_len, args.d_model, device=device)
                for repeat in range(args.repeats):
                    for name, kind, backend in _attention_entries(args):  # interleaved, so
                        torch.manual_seed(0)  # drifts hit every kind alike
                        layer = build_attention(kind, d_model=args.d_model, n_heads=args.heads)
                        forward = partial(
                            _attention_forward,
                            layer.to(device),
                            x.clone().requires_grad_(),
                            device,
                            DTYPES[dtype_name],
                            mask == "causal",
                        )
                        measured = _measure(forward, device, args.min_time, backend)
                        if measured is None:
                            if repeat == 0:
                                print(
                                    f"{name}: PyTorch has no such kernel for {dtype_name}, "
                                    f"mask {mask}, T = {seq_len} on {device}; left out"
                                )
                            continue
                        seconds, memory = measured
                        rows.append(
                            {
                                "dtype": dtype_name,
                                "mask": mask,
                                "seq_len": seq_len,
                                "kind": name,
                                "repeat": repeat,
                                "ms": 1000 * seconds,
                                "memory_mib": memory / 2**20,
                            }
                        )
    return rows


# What PyTorch says when a forced SDPA backend cannot take the input: on CUDA, on the CPU.
NO_KERNEL = ("No available kernel", "No viable backend")


def _measure(
    forward: Callable[[], torch.Tensor],
    device: torch.device,
    min_time: float,
    backend: str | None,
) -> tuple[float, int] | None:
    """``_time_and_memory`` under SDPA ``backend`` (None: PyTorch's choice), or None where
    PyTorch has no kernel of that backend for the input (its flash kernel has no fp32)."""
    if backend is None:
        return _time_and_memory(forward, device, min_time)
    try:
        with sdpa_kernel(SDPA_BACKENDS[backend]):
            return _time_and_memory(forward, device, min_time)
    except RuntimeError as error:
        if not any(words in str(error) for words in NO_KERNEL):
            raise
        return None


def _time_and_memory(
    forward: Callable[[], torch.Tensor], device: torch.device, min_time: float
) -> tuple[float, int]:
    """Median seconds of forward + backward, and its memory (GPU peak; CPU: saved tensors)."""
    step = partial(_attention_step, forward)
    seconds = median_time(step, min_time)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        return seconds, torch.cuda.max_memory_allocated()
    return seconds, saved_bytes(forward)


# The kinds whose block sizes ``flash-blocks`` tries, and the sizes tried unless told (a Triton
# program holds its blocks on chip: 128 is about its limit).
BLOCK_SIZES = {"scratch_flash": [64, 128, 256, 512, 1024], "scratch_triton": [32, 64, 128]}
# What ``flash-blocks`` varies (stages and warps: the Triton kernel's only).
TUNED = ("block_q", "block_k", "stages", "warps")


def bench_flash_blocks(args: argparse.Namespace) -> list[dict]:
    """scratch_flash (or, ``--kinds scratch_triton``, the Triton kernel), forward + backward,
    over a grid of block sizes (the Triton kernel also over ``--stages`` and ``--warps``): how
    the defaults were chosen. Configurations a GPU cannot hold on chip (Triton says so when it
    compiles) are left out with a line. ``--sdpa-backends`` adds ``scratch_fused`` held to each
    backend, timed beside them, for the table's ratio (FlashAttention-2's kernel: ``flash``)."""
    device = torch.device(args.device)
    rows = []
    for dtype_name, mask, seq_len in itertools.product(args.dtypes, args.masks, args.seq_lens):
        x = torch.randn(args.batch, seq_len, args.d_model, device=device)
        setting = {"dtype": dtype_name, "mask": mask, "seq_len": seq_len}
        forward = partial(
            _attention_forward,
            device=device,
            autocast=DTYPES[dtype_name],
            causal=mask == "causal",
        )
        too_large = set()
        for repeat in range(args.repeats):  # each repeat times everything, interleaved
            for backend in args.sdpa_backends:  # the reference
                torch.manual_seed(0)
                layer = build_attention("scratch_fused", d_model=args.d_model, n_heads=args.heads)
                step = partial(forward, layer.to(device), x.clone().requires_grad_())
                measured = _measure(step, device, args.min_time, backend)
                if measured is not None:
                    reference = {"kind": f"scratch_fused[{backend}]", **dict.fromkeys(TUNED)}
                    rows.append(
                        {**setting, **reference, "repeat": repeat, "ms": 1000 * measured[0]}
                    )
            for kind, config in _configs(args):
                if (kind, *config.values()) in too_large:
                    continue
                torch.manual_seed(0)
                layer = MultiHeadAttention(
                    args.d_model,
                    args.heads,
                    batch_first=True,
                    kernel=KERNEL_OF_KIND[kind],
                    block_q=config["block_q"],
                    block_k=config["block_k"],
                ).to(device)
                step = partial(forward, layer, x.clone().requires_grad_())
                try:
                    # stages and warps are None (no change) outside the Triton kernel
                    with triton_flash.pipeline(config["stages"], config["warps"]):
                        seconds, _ = _time_and_memory(step, device, args.min_time)
                except triton_flash.OutOfResources:
                    too_large.add((kind, *config.values()))
                    print(f"{kind} {dtype_name}: {config} does not fit on chip; left out")
                    continue
                rows.append(
                    {**setting, "kind": kind, **config, "repeat": repeat, "ms": 1000 * seconds}
                )
    return rows


def _configs(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(kind, {block_q, block_k, stages, warps}) for every configuration ``flash-blocks`` tries
    (stages and warps None outside the Triton kernel: it has none)."""
    configs = []
    for kind in args.kinds:
        sizes = args.block_sizes or BLOCK_SIZES[kind]
        stages, warps = (args.stages, args.warps) if kind == "scratch_triton" else ([None], [None])
        for values in itertools.product(sizes, sizes, stages, warps):
            configs.append((kind, dict(zip(TUNED, values, strict=True))))
    return configs


_TUNED_AT = list(enumerate(TUNED, start=4))  # where each tuned setting sits in a table key


def _shown(kind: str, name: str, value: int | None) -> str:
    """A tuned setting's cell: '–' where the kind has no such setting (PyTorch's kernel; stages
    and warps outside Triton), 'default' where the kernel chose it."""
    if kind.startswith("scratch_fused[") or (
        name in ("stages", "warps") and kind != "scratch_triton"
    ):
        return "–"
    return "default" if value is None else str(value)


def flash_blocks_table(rows: list[dict]) -> str:
    """Markdown: median ms per configuration, fastest first within each kind, dtype, mask and
    length; with a ``scratch_fused[...]`` reference, each time over the reference's."""
    keys = ("kind", "dtype", "mask", "seq_len", *TUNED)
    ms = summarise(rows, keys, "ms")
    references = sorted({key[0] for key in ms if key[0].startswith("scratch_fused[")})
    lines = [
        "| kind | dtype | mask | T | block_q | block_k | stages | warps | fwd+bwd ms |"
        + "".join(f" vs {name} |" for name in references),
        "| --- " * (9 + len(references)) + "|",
    ]
    for key in sorted(ms, key=lambda k: (k[0].startswith("scratch_fused["), *k[:4], ms[k])):
        ratios = []
        for name in references:
            reference = ms.get((name, *key[1:4], None, None, None, None))
            ratios.append(f"{ms[key] / reference:.2f}x" if reference else "–")
        shown = [*map(str, key[:4]), *(_shown(key[0], name, key[i]) for i, name in _TUNED_AT)]
        lines.append("| " + " | ".join([*shown, f"{ms[key]:.2f}", *ratios]) + " |")
    return "\n".join(lines)


def attention_table(rows: list[dict], device: str) -> str:
    """Markdown: median ms and memory per kind, and the ratios to nn.MultiheadAttention."""
    keys = ("dtype", "mask", "seq_len", "kind")
    ms = summarise(rows, keys, "ms")
    mem = summarise(rows, keys, "memory_mib")
    memory_name = "peak MiB" if device.startswith("cuda") else "saved for backward, MiB"
    lines = [
        f"| dtype | mask | T | kind | fwd+bwd ms | {memory_name} | time vs torch "
        "| memory vs torch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in sorted(ms):
        ref = (*key[:3], "torch")
        ratios = f"{ms[key] / ms[ref]:.2f}x | {mem[key] / mem[ref]:.2f}x" if ref in ms else "– | –"
        lines.append(
            "| " + " | ".join(map(str, key)) + f" | {ms[key]:.2f} | {mem[key]:.1f} | {ratios} |"
        )
    return "\n".join(lines)


def plot_attention(rows: list[dict], path: Path) -> None:
    """Time and memory against sequence length, one line per kind and mask (first dtype)."""
    dtype = rows[0]["dtype"]
    same_dtype = [r for r in rows if r["dtype"] == dtype]
    ms = summarise(same_dtype, ("seq_len", "kind", "mask"), "ms")
    mem = summarise(same_dtype, ("seq_len", "kind", "mask"), "memory_mib")
    fig = Figure(figsize=(9, 3.5))
    for ax, values, label in zip(fig.subplots(1, 2), (ms, mem), ("fwd+bwd ms", "MiB"), strict=True):
        for kind, mask in sorted({(k, m) for _, k, m in values}):
            lengths = sorted(t for t, k, m in values if (k, m) == (kind, mask))
            ax.plot(
                lengths,
                [values[t, kind, mask] for t in lengths],
                marker="o",
                linestyle="--" if mask == "causal" else "-",
                label=kind if mask == "none" else f"{kind} ({mask})",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(f"one attention layer ({dtype})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
