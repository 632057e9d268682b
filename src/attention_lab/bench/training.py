"""The training benchmark: steps of whole models, every attention kind, on synthetic batches
(``python -m attention_lab.cli.bench train``), and the MNIST input pipeline (``data``).

A step is the task's own: ``Task.loss`` on a batch that the experiment's data module makes
without its data (``synthetic_batch``), backward and an AdamW step; so what is timed is what
``train.py`` runs, with nothing written twice. Translation models get sentence pairs of
``--seq-len`` tokens and the language tasks sentences of that many pieces (ids drawn at random:
a step's cost does not depend on which tokens they are). Besides the experiments, ``bert_base``,
``minilm`` and ``vit_b_16`` are models at the sizes of those pretrained checkpoints (random
weights, nothing downloaded): BERT-base and all-MiniLM-L6-v2 with the course's sentiment head,
fully fine-tuned, on ``--seq-len`` tokens; ViT-B/16 on 224x224 images, 1000 classes; their batch
is ``--sized-batch``. Each row gives samples/s (and tokens/s), the ratio to ``torch``, the memory
of a step (GPU: peak allocated; CPU: what autograd saves for backward), and the model's
TFLOP/s (FLOPs of a step counted by ``FlopCounterMode`` on the textbook path) with MFU.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attention_lab.bench.measure import DTYPES, median_time, saved_bytes, summarise
from attention_lab.data.mnist import synthetic_images
from attention_lab.data.sst2 import LABEL_NAMES, collate_texts
from attention_lab.data.ud import UPOS_TAGS
from attention_lab.models import Bert, BertSentimentClassifier, VisionTransformer
from attention_lab.pretrained import TORCHVISION_VITS, VIT_LAYER_NORM_EPS
from attention_lab.run.training import (
    build_model,
    fill_model_settings_from_data,
    instantiate_setting,
)
from attention_lab.tasks import ImageClassificationTask, SequenceClassificationTask
from attention_lab.tasks.base import Task

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
BENCH_OPTIMIZER = partial(torch.optim.AdamW, lr=1e-4)  # every kind's steps alike


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


# Constructor settings of the models at pretrained checkpoints' sizes (Bert's defaults are
# BERT-base's; minilm is all-MiniLM-L6-v2's, the checkpoint of experiment=sst2_minilm).
BERT_SIZES = {
    "bert_base": {},
    "minilm": {"d_model": 384, "n_heads": 12, "n_layers": 6, "d_ff": 1536},
}
SIZED_MODELS = {**BERT_SIZES, "vit_b_16": TORCHVISION_VITS["vit_b_16"]}


def sized_model(name: str, kind: str) -> nn.Module:
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


def _sized_task(name: str, kind: str, batch_size: int, length: int) -> tuple[Task, Any]:
    """A ``SIZED_MODELS`` model in its task, and a synthetic batch for it: sentences of
    ``length`` pieces ([CLS] first, no padding) with a label each, or 224x224 RGB images."""
    net = sized_model(name, kind)
    if name in BERT_SIZES:
        vocab = net.body.token_embedding.num_embeddings
        sentences = [
            (torch.randint(1, vocab, (length,)), torch.randint(len(LABEL_NAMES), ()), "")
            for _ in range(batch_size)
        ]
        task = SequenceClassificationTask(net, BENCH_OPTIMIZER, num_classes=len(LABEL_NAMES))
        return task, collate_texts(sentences, pad_id=0)
    images, labels = synthetic_images(batch_size, channels=3, size=224, num_classes=1000)
    task = ImageClassificationTask(net, BENCH_OPTIMIZER, num_classes=1000)
    return task, (images.float() / 255.0, labels)


def _task_and_batch(
    args: argparse.Namespace, experiment: str, cfg: DictConfig | None, kind: str
) -> tuple[Task, Any]:
    """The experiment's task around its model with ``kind`` attention (not compiled; in eval
    mode with ``--inference``) and a synthetic batch from its data module, on ``--device``.
    ``cfg`` is the experiment's, None for SIZED_MODELS."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    if cfg is None:
        task, batch = _sized_task(experiment, kind, args.sized_batch, args.seq_len)
    else:
        cfg.model.compile = False  # compiled by the caller
        if "attention" in cfg.model:  # a reference without attention runs as it is
            cfg.model.attention = kind
        task = instantiate_setting(cfg.task, "task", net=build_model(cfg))
        datamodule = instantiate_setting(cfg.data, "data")  # reads no files
        batch = datamodule.synthetic_batch(args.seq_len)
        batch = datamodule.on_after_batch_transfer(batch, 0)  # MNIST: uint8 -> model input
    task = task.to(device).train(not args.inference)  # eval: no dropout, fused kernels run
    batch = task.transfer_batch_to_device(batch, device, 0)
    return task, batch


def _samples_and_tokens(batch: Any) -> tuple[int, int]:
    """Samples in ``batch`` and the tokens of their inputs (0 for images)."""
    inputs = batch[0]  # images (B, C, H, W), or token ids (B, T)
    return inputs.size(0), (inputs.numel() if inputs.dim() == 2 else 0)


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


def step_flops(step: Callable[[], None]) -> int:
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
        cfg = synthetic_config(experiment, args)
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
        flops = step_flops(_train_variant(args, experiment, cfg, "scratch", False)[0])
        for repeat in range(args.repeats):
            for (kind, compiled), (step, samples, tokens, memory) in variants.items():
                seconds = median_time(step, args.min_time)
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


def synthetic_config(experiment: str, args: argparse.Namespace) -> DictConfig | None:
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


def _train_variant(
    args: argparse.Namespace, experiment: str, cfg: DictConfig | None, kind: str, compiled: bool
) -> tuple[Callable[[], None], int, int, float]:
    """One model's step (training, or inference with ``--inference``), the samples and tokens
    it takes, and the memory it needs."""
    device, autocast = torch.device(args.device), DTYPES[args.precision]
    task, batch = _task_and_batch(args, experiment, cfg, kind)
    if compiled:
        task.net.compile()  # in place, as build_model does for model.compile=true
    loss = partial(task.loss, batch)
    samples, tokens = _samples_and_tokens(batch)
    if args.inference:
        step = partial(_inference_step, loss, device, autocast)
        return step, samples, tokens, _step_memory(step, None, device, compiled)
    optimizer = BENCH_OPTIMIZER(task.parameters())
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
    task, batch = _task_and_batch(args, experiment, cfg, kind)
    loss = partial(task.loss, batch)
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
    return float("nan") if compiled or loss is None else float(saved_bytes(loss))


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
    rate = summarise(rows, keys, "samples_per_s")
    low = summarise(rows, keys, "samples_per_s", min)
    high = summarise(rows, keys, "samples_per_s", max)
    tokens = summarise(rows, keys, "tokens_per_s")
    memory = summarise(rows, keys, "memory_mib")
    tflops = summarise(rows, keys, "model_tflops")
    mfu = summarise(rows, keys, "mfu")
    breaks = summarise(rows, keys, "graph_breaks", max)
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
