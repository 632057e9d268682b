"""Benchmarks, runnable by anyone:
``python -m attention_lab.cli.bench {attention,flash-blocks,train,data}``.

- ``attention``: forward + backward time of one multi-head attention layer per kind, over
  sequence lengths, with and without the causal mask, and its memory; ``flash-blocks``: our
  FlashAttention over a grid of (block_q, block_k), the Triton kernel's also over ``--stages``
  and ``--warps``, beside ``--sdpa-backends`` (PyTorch's kernels) for the ratio. Both in
  ``attention_lab.bench.kernels``.
- ``train``: training (``--inference``: forward) throughput of whole models per kind, the
  tasks' own steps on synthetic batches, optionally compiled (``--compile``) or under autocast
  (``--precision``); ``data``: samples/s of the MNIST pipeline. Both in
  ``attention_lab.bench.training``.

Each measures every kind in one process, interleaved, over ``--repeats``, and writes a markdown
table (printed, and saved with a CSV, and for ``attention`` a plot, under ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import torch

from attention_lab.bench.kernels import (
    BLOCK_SIZES,
    SDPA_BACKENDS,
    attention_table,
    bench_attention,
    bench_flash_blocks,
    flash_blocks_table,
    plot_attention,
)
from attention_lab.bench.measure import DTYPES, summarise
from attention_lab.bench.training import bench_data, bench_train, train_table
from attention_lab.nn import triton_flash
from attention_lab.nn.attention import ATTENTION_KINDS, PORTABLE_KINDS


def _kernel_options(parser: argparse.ArgumentParser) -> None:
    """Settings of ``attention`` and ``flash-blocks``."""
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument(
        "--sdpa-backends",
        nargs="*",
        default=[],
        choices=sorted(SDPA_BACKENDS),
        help="attention, flash-blocks: also scratch_fused held to each of these "
        "F.scaled_dot_product_attention backends (flash and efficient need a GPU)",
    )
    parser.add_argument(
        "--masks",
        nargs="+",
        default=["none"],
        choices=["none", "causal"],
        help="attention, flash-blocks: without a mask, and/or with the causal mask",
    )
    parser.add_argument(
        "--block-sizes",
        type=int,
        nargs="+",
        help="flash-blocks: the block sizes tried for block_q and block_k (default: 64 to 1024 "
        "for scratch_flash, 32 to 128 for scratch_triton)",
    )
    parser.add_argument(
        "--stages",
        type=int,
        nargs="+",
        default=[None],
        help="flash-blocks, scratch_triton: software-pipelining stages tried (default: the "
        "kernel's choice)",
    )
    parser.add_argument(
        "--warps",
        type=int,
        nargs="+",
        default=[None],
        help="flash-blocks, scratch_triton: warps per program tried (default: the kernel's)",
    )


def _training_options(parser: argparse.ArgumentParser) -> None:
    """Settings of ``train`` and ``data``."""
    parser.add_argument(
        "--experiments",
        nargs="+",
        help="experiments to measure (train: all three models, or also bert_base, minilm and "
        "vit_b_16; "
        "data: the two MNIST ones)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=24,
        help="train: tokens per sentence (translation, the language tasks, BERT)",
    )
    parser.add_argument(
        "--sized-batch", type=int, default=32, help="train: batch of bert_base, minilm, vit_b_16"
    )
    parser.add_argument(
        "--compile", action="store_true", help="train: also measure each kind compiled"
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=sorted(DTYPES),
        help="train: fp32, or the forward under autocast to bf16 / fp16 (as bf16-mixed, 16-mixed)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="train: the device's peak TFLOP/s at --precision, for MFU (known GPUs: looked up)",
    )
    parser.add_argument(
        "--inference",
        action="store_true",
        help="train: measure forward passes in eval mode (no dropout, no gradients) instead",
    )
    parser.add_argument("--data-dir", default=".data")
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="Hydra overrides, e.g. data.batch_size=256"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="attention-lab benchmarks")
    parser.add_argument("what", choices=["attention", "flash-blocks", "train", "data"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=ATTENTION_KINDS,
        help="attention, train: attention kinds to measure (default: all; on the CPU all but "
        "scratch_triton, whose CPU interpreter is for tests, not timing)",
    )
    _kernel_options(parser)
    _training_options(parser)
    return parser


def _defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill the settings whose default depends on the benchmark and the device."""
    if args.what == "flash-blocks":
        args.kinds = args.kinds or ["scratch_flash"]
        if set(args.kinds) - set(BLOCK_SIZES):
            parser.error(f"flash-blocks: --kinds takes {' and/or '.join(BLOCK_SIZES)}")
    tuned = args.stages != [None] or args.warps != [None]
    if tuned and (args.what != "flash-blocks" or "scratch_triton" not in args.kinds):
        parser.error("--stages and --warps are for flash-blocks --kinds scratch_triton")
    try:
        for stages, warps in itertools.product(args.stages, args.warps):
            triton_flash.check_pipeline(stages, warps)
    except ValueError as error:
        parser.error(f"--stages/--warps: {error}")
    if args.kinds is None:
        args.kinds = list(ATTENTION_KINDS if args.device.startswith("cuda") else PORTABLE_KINDS)
    if args.experiments is None:
        args.experiments = ["mnist_encoder", "vit_mnist"]
        if args.what == "train":
            args.experiments.append("multi30k_transformer")


def _measure(args: argparse.Namespace) -> tuple[list[dict], str]:
    """The rows of the benchmark ``args.what`` and its markdown table."""
    if args.what == "attention":
        rows = bench_attention(args)
        if rows:
            plot_attention(rows, args.out / "attention.png")
        return rows, attention_table(rows, args.device)
    if args.what == "flash-blocks":
        rows = bench_flash_blocks(args)
        return rows, flash_blocks_table(rows)
    if args.what == "train":
        rows = bench_train(args)
        return rows, train_table(rows)
    rows = bench_data(args)
    rate = summarise(rows, ("experiment",), "samples_per_s")
    table = "| experiment | data samples/s (median) |\n| --- | --- |\n" + "\n".join(
        f"| {experiment} | {value:.0f} |" for (experiment,), value in sorted(rate.items())
    )
    return rows, table


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = _parser()
    args = parser.parse_args(argv)
    _defaults(args, parser)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, table = _measure(args)
    if not rows:
        sys.exit(f"{args.what}: nothing could be measured (see the lines above)")
    name = "inference" if args.what == "train" and args.inference else args.what
    with (args.out / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / f"{name}.md").write_text(table + "\n")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    setting = f", {args.precision}" if args.what == "train" else ""
    print(f"{name} benchmark on {device_name}, {torch.get_num_threads()} threads{setting}\n")
    print(table)
    print(f"\nWritten to {args.out}/")


if __name__ == "__main__":
    main()
