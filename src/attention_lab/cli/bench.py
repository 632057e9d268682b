"""Benchmarks, runnable by anyone:
``python -m attention_lab.cli.bench {attention,flash-blocks,train,data}``.

- ``attention``: forward + backward time of one multi-head attention layer per kind, over
  sequence lengths, without a mask and (``--masks none causal``) with the causal one, and its
  memory: peak allocated on a GPU; on the CPU, where no allocator reports a peak, the bytes
  autograd saves for the backward pass (exact, and the part that differs between kinds: the
  explicit path keeps the (B, H, T, S) weights). ``nn.MultiheadAttention`` gets the causal mask
  with its ``is_causal`` hint; ours get ``is_causal`` alone. ``--sdpa-backends flash efficient``
  adds ``scratch_fused`` held to each of PyTorch's backends: the kernels to measure our
  FlashAttention (``scratch_flash``, ``scratch_triton``) against.
- ``flash-blocks``: ``scratch_flash`` (``--kinds scratch_triton``: the Triton kernel) over a
  grid of (block_q, block_k), per ``--dtypes``: how the default block sizes are chosen.
- ``train``: training throughput of whole models (synthetic batches of the experiment's batch
  size; samples/s, and tokens/s for translation, the language tasks and BERT), every attention
  kind measured in one process, interleaved, several repeats, median reported, with the ratio
  to ``torch``; with ``--compile``, each kind also compiled, with its speed-up over eager and
  the graph breaks torch.compile met in its forward pass (0 when the model is one graph); with
  ``--inference``, forward passes in eval mode instead (no dropout, no gradients: where fused
  kernels run); ``--precision bf16`` runs the forward under autocast. Each row also gives the
  model's TFLOP/s (FLOPs of one step counted by PyTorch's ``FlopCounterMode`` on the textbook
  path, over the step time) and MFU, its share of the GPU's peak. Besides the experiments,
  ``bert_base``, ``minilm`` and ``vit_b_16`` are models at the sizes of those pretrained
  checkpoints (random weights, nothing downloaded): BERT-base and all-MiniLM-L6-v2 with the
  course's sentiment head, fully fine-tuned, on ``--seq-len`` tokens; ViT-B/16 on 224x224
  images, 1000 classes. Their batch is
  ``--sized-batch``.
- ``data``: samples per second the MNIST pipeline delivers (batching, uint8 -> float,
  augmentation), to compare with what a model consumes.

Each writes a markdown table (printed, and saved with a CSV and a plot under ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from attention_lab.data.ud import UPOS_TAGS
from attention_lab.models import Bert, BertSentimentClassifier, VisionTransformer
from attention_lab.nn import triton_flash
from attention_lab.nn.attention import (
    ATTENTION_KINDS,
    KERNEL_OF_KIND,
    PORTABLE_KINDS,
    MultiHeadAttention,
    build_attention,
    causal_mask,
)
from attention_lab.pretrained import TORCHVISION_VITS, VIT_LAYER_NORM_EPS
from attention_lab.run.training import (
    build_model,
    fill_model_settings_from_data,
    instantiate_setting,
)

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def _median_time(step: Callable[[], None], min_time_s: float) -> float:
    """Median seconds per call, by ``torch.utils.benchmark.Timer`` over about ``min_time_s``:
    it warms up, synchronises a GPU around each block of calls, and times blocks of calls
    rather than single ones. On this process's threads (the Timer's own default is one)."""
    timer = benchmark.Timer(
        stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()
    )
    return timer.blocked_autorange(min_run_time=min_time_s).median


def _saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
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
    seconds = _median_time(step, min_time)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        return seconds, torch.cuda.max_memory_allocated()
    return seconds, _saved_bytes(forward)


# The kinds whose block sizes ``flash-blocks`` tries, and the sizes tried unless told (a Triton
# program holds its blocks on chip: 128 is about its limit).
BLOCK_SIZES = {"scratch_flash": [64, 128, 256, 512, 1024], "scratch_triton": [32, 64, 128]}


def bench_flash_blocks(args: argparse.Namespace) -> list[dict]:
    """scratch_flash (or, ``--kinds scratch_triton``, the Triton kernel), forward + backward,
    over a grid of block sizes: how the defaults were chosen. Block sizes a GPU cannot hold
    on chip (Triton says so when it compiles) are left out with a line."""
    device = torch.device(args.device)
    rows = []
    for kind, dtype_name, mask, seq_len in itertools.product(
        args.kinds, args.dtypes, args.masks, args.seq_lens
    ):
        x = torch.randn(args.batch, seq_len, args.d_model, device=device)
        too_large = set()
        sizes = args.block_sizes or BLOCK_SIZES[kind]
        for repeat, block_q, block_k in itertools.product(range(args.repeats), sizes, sizes):
            if (block_q, block_k) in too_large:
                continue
            torch.manual_seed(0)
            layer = MultiHeadAttention(
                args.d_model,
                args.heads,
                batch_first=True,
                kernel=KERNEL_OF_KIND[kind],
                block_q=block_q,
                block_k=block_k,
            ).to(device)
            forward = partial(
                _attention_forward,
                layer,
                x.clone().requires_grad_(),
                device,
                DTYPES[dtype_name],
                mask == "causal",
            )
            try:
                seconds, _ = _time_and_memory(forward, device, args.min_time)
            except triton_flash.OutOfResources:
                too_large.add((block_q, block_k))
                print(f"{kind} {dtype_name}: blocks {block_q} x {block_k} do not fit; left out")
                continue
            rows.append(
                {
                    "kind": kind,
                    "dtype": dtype_name,
                    "mask": mask,
                    "seq_len": seq_len,
                    "block_q": block_q,
                    "block_k": block_k,
                    "repeat": repeat,
                    "ms": 1000 * seconds,
                }
            )
    return rows


def flash_blocks_table(rows: list[dict]) -> str:
    """Markdown: median ms per block size pair, fastest first within each kind, dtype, mask and
    length."""
    keys = ("kind", "dtype", "mask", "seq_len", "block_q", "block_k")
    ms = _summarise(rows, keys, "ms")
    lines = [
        "| kind | dtype | mask | T | block_q | block_k | fwd+bwd ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in sorted(ms, key=lambda k: (*k[:4], ms[k])):
        lines.append("| " + " | ".join(map(str, key)) + f" | {ms[key]:.2f} |")
    return "\n".join(lines)


def _summarise(
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


def attention_table(rows: list[dict], device: str) -> str:
    """Markdown: median ms and memory per kind, and the ratios to nn.MultiheadAttention."""
    keys = ("dtype", "mask", "seq_len", "kind")
    ms = _summarise(rows, keys, "ms")
    mem = _summarise(rows, keys, "memory_mib")
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
    ms = _summarise(same_dtype, ("seq_len", "kind", "mask"), "ms")
    mem = _summarise(same_dtype, ("seq_len", "kind", "mask"), "memory_mib")
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


def _experiment_config(experiment: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                f"experiment={experiment}",
                "paths.output_dir=.",
                "paths.data_dir=.",
                *overrides,
            ],
        )


StepLoss = tuple[Callable[[], torch.Tensor], int, int]  # loss function, samples, tokens per step


def _classification_step(cfg: DictConfig, net: nn.Module, device: torch.device) -> StepLoss:
    """Cross-entropy on a synthetic batch of images."""
    batch, size = cfg.data.batch_size, cfg.model.image_size
    images = torch.randn(batch, cfg.model.in_channels, size, size, device=device)
    labels = torch.randint(0, cfg.model.num_classes, (batch,), device=device)
    return lambda: F.cross_entropy(net(images), labels), batch, 0


def _translation_step(
    cfg: DictConfig, net: nn.Module, device: torch.device, length: int
) -> StepLoss:
    """Teacher-forced loss on synthetic sentence pairs of ``length`` tokens, no padding."""
    batch, vocab = cfg.data.batch_size, cfg.model.tgt_vocab_size
    src = torch.randint(4, cfg.model.src_vocab_size, (batch, length), device=device)
    tgt = torch.randint(4, vocab, (batch, length + 1), device=device)

    def loss() -> torch.Tensor:
        logits = net(src, tgt[:, :-1])  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())

    return loss, batch, batch * length


def _text_step(cfg: DictConfig, net: nn.Module, device: torch.device, length: int) -> StepLoss:
    """Cross-entropy on synthetic sentences of ``length`` pieces, <cls> first, no padding: a
    tag per word of 1.5 pieces on average for a tagger, a label per sentence otherwise."""
    batch = cfg.data.batch_size
    ids = torch.randint(5, cfg.model.vocab_size, (batch, length), device=device)  # (B, T)
    ids[:, 0] = 4  # <cls>
    if "num_tags" not in cfg.model:
        labels = torch.randint(0, cfg.model.num_classes, (batch,), device=device)
        return lambda: F.cross_entropy(net(ids), labels), batch, batch * length
    starts = torch.rand(batch, length, device=device) < 2 / 3  # a new word at this piece
    starts[:, 1] = True
    word_ids = starts[:, 1:].long().cumsum(dim=1) - 1  # (B, T-1)
    word_ids = torch.cat([word_ids.new_full((batch, 1), -1), word_ids], dim=1)  # (B, T)
    n_words = int(word_ids.max()) + 1
    tags = torch.randint(0, cfg.model.num_tags, (batch, n_words), device=device)
    words = (word_ids[:, :, None] == torch.arange(n_words, device=device)).any(1)  # (B, W)
    tags[~words] = -100  # sentences with fewer words: nothing to tag

    def loss() -> torch.Tensor:
        logits = net(ids, word_ids, n_words)  # (B, W, num_tags)
        return F.cross_entropy(logits.flatten(0, 1), tags.flatten(), ignore_index=-100)

    return loss, batch, batch * length


# Constructor settings of the models at pretrained checkpoints' sizes (Bert's defaults are
# BERT-base's; minilm is all-MiniLM-L6-v2's, the checkpoint of experiment=sst2_minilm).
BERT_SIZES = {
    "bert_base": {},
    "minilm": {"d_model": 384, "n_heads": 12, "n_layers": 6, "d_ff": 1536},
}
SIZED_MODELS = {**BERT_SIZES, "vit_b_16": TORCHVISION_VITS["vit_b_16"]}


def _sized_model(name: str, kind: str) -> nn.Module:
    """BERT-base or MiniLM (with the course's sentiment head, unfrozen) or ViT-B/16, random
    weights."""
    settings = SIZED_MODELS[name]
    if name in BERT_SIZES:
        body = Bert(**settings, attention=kind, pooler=False)
        return BertSentimentClassifier(body=body, freeze_body=False)
    return VisionTransformer(
        **settings,
        image_size=224,
        in_channels=3,
        num_classes=1000,
        dropout=0.0,  # torchvision's default
        attention=kind,
        layer_norm_eps=VIT_LAYER_NORM_EPS,
    )


def _sized_step(
    name: str, net: nn.Module, device: torch.device, batch: int, length: int
) -> StepLoss:
    """Cross-entropy on a synthetic batch for a ``SIZED_MODELS`` model."""
    if name in BERT_SIZES:
        vocab = net.body.token_embedding.num_embeddings
        tokens = torch.randint(1, vocab, (batch, length), device=device)  # (B, T), no [PAD]
        labels = torch.randint(0, 2, (batch,), device=device)
        return lambda: F.cross_entropy(net(tokens), labels), batch, batch * length
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    return lambda: F.cross_entropy(net(images), labels), batch, 0


def _train_step(
    loss: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    autocast: torch.dtype | None,
) -> None:
    """One optimiser step; the forward under autocast to ``autocast`` (None: fp32), as
    ``trainer.precision=bf16-mixed`` / ``16-mixed`` run it (16-mixed's loss scaling aside)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        value = loss()
    value.backward()
    optimizer.step()


def _inference_step(
    loss: Callable[[], torch.Tensor], device: torch.device, autocast: torch.dtype | None
) -> None:
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=autocast, enabled=autocast is not None),
    ):
        loss()


# Dense peak TFLOP/s by GPU and precision, from NVIDIA's data sheets (no sparsity; fp32 is the
# non-tensor-core rate, which PyTorch's default, torch.backends.cuda.matmul.allow_tf32 = False,
# runs at). The first name contained in torch.cuda.get_device_name() is used.
PEAK_TFLOPS = {
    "H100 PCIe": {"fp32": 51.2, "bf16": 756.0, "fp16": 756.0},
    "H100": {"fp32": 66.9, "bf16": 989.4, "fp16": 989.4},  # SXM
    "H200": {"fp32": 66.9, "bf16": 989.4, "fp16": 989.4},
    "A100": {"fp32": 19.5, "bf16": 312.0, "fp16": 312.0},
}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for ``precision``, when known (None on a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[precision] for gpu, peaks in PEAK_TFLOPS.items() if gpu in name), None)


def _step_flops(step: Callable[[], None]) -> int:
    """Floating-point operations of one call of ``step``, by PyTorch's FlopCounterMode (matrix
    products, convolutions and attention kernels; elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def bench_train(args: argparse.Namespace) -> list[dict]:
    """Training steps of whole models on synthetic batches, per attention kind, interleaved.

    Translation models get sentence pairs of ``--seq-len`` tokens, the language tasks
    sentences of that many pieces (token ids drawn at random:
    the cost of a step does not depend on which tokens they are). With ``--compile`` every kind
    is also measured compiled with ``torch.compile`` (the first, compiling call is the warm-up).
    """
    device = torch.device(args.device)
    peak = args.peak_tflops or peak_tflops(device, args.precision)
    rows = []
    for experiment in args.experiments:
        cfg = _synthetic_config(experiment, args)
        breaks = {}
        if args.compile:  # counted before anything is compiled: explain() resets Dynamo
            breaks = {k: count_graph_breaks(args, experiment, cfg, k) for k in args.kinds}
        variants = {
            (kind, compiled): _train_variant(args, experiment, cfg, kind, compiled)
            for kind in args.kinds
            for compiled in ((False, True) if args.compile else (False,))
        }
        # The model's FLOPs per step, counted on the textbook path (what the model computes;
        # FlashAttention's recomputation and kernels the counter cannot see are not in it).
        flops = _step_flops(_train_variant(args, experiment, cfg, "scratch", False)[0])
        for repeat in range(args.repeats):
            for (kind, compiled), (step, samples, tokens, memory) in variants.items():
                seconds = _median_time(step, args.min_time)
                tflops = flops / seconds / 1e12
                rows.append(
                    {
                        "experiment": experiment,
                        "kind": kind,
                        "compiled": compiled,
                        "precision": args.precision,
                        "repeat": repeat,
                        "ms_per_step": 1000 * seconds,
                        "samples_per_s": samples / seconds,
                        "tokens_per_s": tokens / seconds,
                        "memory_mib": memory / 2**20,
                        "gflop_per_step": flops / 1e9,
                        "model_tflops": tflops,
                        "mfu": tflops / peak if peak else math.nan,
                        "graph_breaks": breaks[kind] if compiled else math.nan,
                    }
                )
    return rows


def _synthetic_config(experiment: str, args: argparse.Namespace) -> DictConfig | None:
    """The experiment's config (None for SIZED_MODELS), with the model settings that a real run
    takes from its data set filled in for synthetic sentences of ``--seq-len`` tokens."""
    if experiment in SIZED_MODELS:
        return None
    cfg = _experiment_config(experiment, args.overrides)
    if "src_vocab_size" in cfg.model or "vocab_size" in cfg.model:
        synthetic_data = SimpleNamespace(
            src_vocab_size=cfg.data.vocab_size,
            tgt_vocab_size=cfg.data.vocab_size,
            vocab_size=cfg.data.vocab_size,
            num_tags=len(UPOS_TAGS),
            max_len=max(cfg.data.max_len, args.seq_len + 1),
        )
        fill_model_settings_from_data(cfg, synthetic_data)
    return cfg


def _model_and_loss(
    args: argparse.Namespace, experiment: str, cfg: DictConfig | None, kind: str
) -> tuple[nn.Module, Callable[[], torch.Tensor], int, int]:
    """One model with ``kind`` attention, not compiled (in eval mode with ``--inference``), its
    loss on a synthetic batch, and the samples and tokens that batch holds. ``cfg`` is the
    experiment's, None for SIZED_MODELS."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    if cfg is None:
        net = _sized_model(experiment, kind).to(device).train()
        loss, samples, tokens = _sized_step(experiment, net, device, args.sized_batch, args.seq_len)
    else:
        cfg.model.attention, cfg.model.compile = kind, False  # compiled by the caller
        net = build_model(cfg).to(device).train()
        if "src_vocab_size" in cfg.model:
            loss, samples, tokens = _translation_step(cfg, net, device, args.seq_len)
        elif "vocab_size" in cfg.model:
            loss, samples, tokens = _text_step(cfg, net, device, args.seq_len)
        else:
            loss, samples, tokens = _classification_step(cfg, net, device)
    if args.inference:
        net.eval()  # no dropout: the fused kernels can run
    return net, loss, samples, tokens


def _train_variant(
    args: argparse.Namespace, experiment: str, cfg: DictConfig | None, kind: str, compiled: bool
) -> tuple[Callable[[], None], int, int, float]:
    """One model's step (training, or inference with ``--inference``), the samples and tokens
    it takes, and the memory it needs."""
    device, autocast = torch.device(args.device), DTYPES[args.precision]
    net, loss, samples, tokens = _model_and_loss(args, experiment, cfg, kind)
    if compiled:
        net.compile()  # in place, as build_model does for model.compile=true
    if args.inference:
        step = partial(_inference_step, loss, device, autocast)
        return step, samples, tokens, _step_memory(step, None, device, compiled)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    step = partial(_train_step, loss, optimizer, device, autocast)
    return step, samples, tokens, _step_memory(step, loss, device, compiled)


def count_graph_breaks(
    args: argparse.Namespace, experiment: str, cfg: DictConfig | None, kind: str
) -> int:
    """How many times torch.compile's tracer (Dynamo) breaks the forward pass of the model
    with ``kind`` attention into separate graphs (0: one graph, as compiling means to give it).
    Each break runs Python between graphs and keeps the compiler from fusing across it.
    Dynamo's ``explain`` resets what Dynamo has compiled so far: count before compiling."""
    autocast = DTYPES[args.precision]
    _, loss, _, _ = _model_and_loss(args, experiment, cfg, kind)
    device_type = torch.device(args.device).type
    with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
        return torch._dynamo.explain(loss)().graph_break_count


def _step_memory(
    step: Callable[[], None],
    loss: Callable[[], torch.Tensor] | None,
    device: torch.device,
    compiled: bool,
) -> float:
    """Bytes one step needs: the peak allocated on a GPU; on the CPU, the tensors autograd
    saves for backward (the activations, which is where attention kinds differ) of a training
    step of an eager model; NaN otherwise (inference saves nothing; a compiled graph keeps its
    own saved tensors, which the hooks do not see)."""
    if device.type == "cuda":
        step()  # lazily built state (optimizer moments, compiled graph) exists before the peak
        torch.cuda.reset_peak_memory_stats()
        step()
        return float(torch.cuda.max_memory_allocated())
    return float("nan") if compiled or loss is None else float(_saved_bytes(loss))


def _rate(value: float) -> str:
    """A rate with no decimals, except below 10 (a BERT-base step on a CPU: 0.37 samples/s)."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def train_table(rows: list[dict]) -> str:
    """Markdown: median samples/s (and tokens/s) per experiment, kind and compilation, the range
    over repeats, the ratio to torch (compiled or not alike), for compiled rows the speed-up
    over eager and its graph breaks, the memory of a step with its ratio to torch, and the
    model's FLOPs per second (its counted FLOPs per step over the median step time) with MFU,
    their share of the device's peak (where known)."""
    keys = ("experiment", "kind", "compiled")
    rate = _summarise(rows, keys, "samples_per_s")
    low = _summarise(rows, keys, "samples_per_s", min)
    high = _summarise(rows, keys, "samples_per_s", max)
    tokens = _summarise(rows, keys, "tokens_per_s")
    memory = _summarise(rows, keys, "memory_mib")
    tflops = _summarise(rows, keys, "model_tflops")
    mfu = _summarise(rows, keys, "mfu")
    breaks = _summarise(rows, keys, "graph_breaks", max)
    lines = [
        "| experiment | kind | compiled | samples/s (median) | samples/s (range) "
        "| tokens/s (median) | vs torch | vs eager | graph breaks | memory (MiB) "
        "| memory vs torch | model TFLOP/s | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in sorted(rate):
        experiment, kind, compiled = key
        reference = (experiment, "torch", compiled)
        vs_torch = f"{rate[key] / rate[reference]:.2f}x" if reference in rate else "–"
        vs_eager = f"{rate[key] / rate[experiment, kind, False]:.2f}x" if compiled else "–"
        token_cell = _rate(tokens[key]) if tokens[key] else "–"
        mib, torch_mib = memory[key], memory.get(reference, math.nan)
        mib_cell = "–" if math.isnan(mib) else f"{mib:.1f}"
        mib_ratio = "–" if math.isnan(mib / torch_mib) else f"{mib / torch_mib:.2f}x"
        lines.append(
            f"| {experiment} | {kind} | {'yes' if compiled else 'no'} | {_rate(rate[key])} "
            f"| {_rate(low[key])}–{_rate(high[key])} | {token_cell} | {vs_torch} | {vs_eager} "
            f"| {f'{breaks[key]:.0f}' if compiled else '–'} | {mib_cell} | {mib_ratio} "
            f"| {tflops[key]:.3g} "
            f"| {'–' if math.isnan(mfu[key]) else f'{100 * mfu[key]:.3g}%'} |"
        )
    return "\n".join(lines)


def bench_data(args: argparse.Namespace) -> list[dict]:
    """Samples/s of the MNIST training pipeline as configured by each experiment."""
    rows = []
    for experiment in args.experiments:
        cfg = _experiment_config(experiment, args.overrides)
        cfg.data.data_dir = args.data_dir
        datamodule = instantiate_setting(cfg.data, "data")
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.trainer = _TrainingFlag()
        for repeat in range(args.repeats):
            started, seen = time.perf_counter(), 0
            for batch in datamodule.train_dataloader():
                images, _ = datamodule.on_after_batch_transfer(batch, 0)
                seen += len(images)
            seconds = time.perf_counter() - started
            rows.append(
                {"experiment": experiment, "repeat": repeat, "samples_per_s": seen / seconds}
            )
    return rows


class _TrainingFlag:
    """Stands in for the Trainer so that the DataModule augments as it does in training."""

    training = True


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="attention-lab benchmarks")
    parser.add_argument("what", choices=["attention", "flash-blocks", "train", "data"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument(
        "--experiments",
        nargs="+",
        help="experiments to measure (train: all three models, or also bert_base, minilm and "
        "vit_b_16; "
        "data: the two MNIST ones)",
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=ATTENTION_KINDS,
        help="attention, train: attention kinds to measure (default: all; on the CPU all but "
        "scratch_triton, whose CPU interpreter is for tests, not timing)",
    )
    parser.add_argument(
        "--sdpa-backends",
        nargs="*",
        default=[],
        choices=sorted(SDPA_BACKENDS),
        help="attention: also scratch_fused held to each of these F.scaled_dot_product_attention "
        "backends (flash and efficient need a GPU)",
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
    args = parser.parse_args(argv)
    if args.what == "flash-blocks":
        args.kinds = args.kinds or ["scratch_flash"]
        if set(args.kinds) - set(BLOCK_SIZES):
            parser.error(f"flash-blocks: --kinds takes {' and/or '.join(BLOCK_SIZES)}")
    if args.kinds is None:
        args.kinds = list(ATTENTION_KINDS if args.device.startswith("cuda") else PORTABLE_KINDS)
    if args.experiments is None:
        args.experiments = ["mnist_encoder", "vit_mnist"]
        if args.what == "train":
            args.experiments.append("multi30k_transformer")
    args.out.mkdir(parents=True, exist_ok=True)

    if args.what == "attention":
        rows = bench_attention(args)
        table = attention_table(rows, args.device)
        plot_attention(rows, args.out / "attention.png")
    elif args.what == "flash-blocks":
        rows = bench_flash_blocks(args)
        table = flash_blocks_table(rows)
    elif args.what == "train":
        rows = bench_train(args)
        table = train_table(rows)
    else:
        rows = bench_data(args)
        rate = _summarise(rows, ("experiment",), "samples_per_s")
        table = "| experiment | data samples/s (median) |\n| --- | --- |\n" + "\n".join(
            f"| {experiment} | {value:.0f} |" for (experiment,), value in sorted(rate.items())
        )
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
