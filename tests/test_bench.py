"""The benchmarks run, write their tables, and measure what they claim to."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from attention_lab.bench.measure import saved_bytes
from attention_lab.bench.training import (
    SIZED_MODELS,
    count_graph_breaks,
    sized_model,
    step_flops,
    synthetic_config,
)
from attention_lab.cli.bench import main
from attention_lab.nn.attention import PORTABLE_KINDS
from attention_lab.run.records import NO_ATTENTION
from tests.conftest import CONF_DIR


def _table(path: Path, keys: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, str]]:
    """A markdown table as {(the cells of ``keys``): {column: cell}}."""
    header, _, *lines = path.read_text().splitlines()
    columns = [cell.strip() for cell in header.split("|")[1:-1]]
    table = {}
    for line in lines:
        row = dict(zip(columns, (cell.strip() for cell in line.split("|")[1:-1]), strict=True))
        table[tuple(row[key] for key in keys)] = row
    return table


def _train_table(path: Path) -> dict[tuple[str, ...], dict[str, str]]:
    """A ``train``/``inference`` table as {(experiment, kind, compiled): {column: cell}}."""
    return _table(path, ("experiment", "kind", "compiled"))


def test_saved_bytes_counts_each_saved_storage_once() -> None:
    x = torch.randn(64, 32, requires_grad=True)  # 8 KiB
    y = torch.randn(64, 32)
    # x * x saves x twice; (x * y).sum() saves y (x is not needed for the gradient wrt x).
    assert saved_bytes(lambda: (x * x).sum()) == x.nbytes
    assert saved_bytes(lambda: (x * x + x * y).sum()) == x.nbytes + y.nbytes
    # Views of one storage hold no more memory than the storage.
    assert saved_bytes(lambda: (x[:32] * x[32:]).sum()) == x.nbytes


def test_step_flops_counts_a_linear_layers_training_step() -> None:
    """Forward x W^T is 2 B I O FLOPs; backward, the gradients of x and W, twice that."""
    layer, x = torch.nn.Linear(32, 16, bias=False), torch.randn(8, 32, requires_grad=True)
    assert step_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 8 * 32 * 16


def test_attention_benchmark_writes_table_csv_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "attention",
        "--out",
        str(tmp_path),
        "--seq-lens",
        "16",
        "128",
        "--batch",
        "2",
        "--d-model",
        "32",
        "--heads",
        "4",
        "--repeats",
        "1",
        "--min-time",
        "0.01",
    ]
    main([*args, "--masks", "none", "causal", "--sdpa-backends", "math", "flash", "efficient"])
    rows = _table(tmp_path / "attention.md", ("mask", "T", "kind"))
    # PyTorch has no memory-efficient kernel on the CPU: its rows are left out, with a line.
    assert "scratch_fused[efficient]: PyTorch has no such kernel" in capsys.readouterr().out
    # On the CPU: every kind but scratch_triton (Triton's interpreter is for tests, not timing).
    kinds = [*PORTABLE_KINDS, "scratch_fused[math]", "scratch_fused[flash]"]
    assert set(rows) == {
        (mask, length, kind)
        for mask in ("none", "causal")
        for length in ("16", "128")
        for kind in kinds
    }
    assert (tmp_path / "attention.png").stat().st_size > 0
    assert (tmp_path / "attention.csv").read_text().startswith("dtype,mask,seq_len,kind")

    def saved_mib(kind: str, mask: str = "none") -> float:
        return float(rows[mask, "128", kind]["saved for backward, MiB"])

    # The explicit path keeps the (B, H, T, T) weights for backward; the fused kernels do not,
    # and ours saves what nn.MultiheadAttention saves.
    assert saved_mib("scratch") > saved_mib("scratch_fused")
    assert saved_mib("scratch") > saved_mib("scratch_flash")
    # Held to PyTorch's math backend, scratch_fused keeps the weights too; to its flash one, not.
    assert saved_mib("scratch_fused[math]") > saved_mib("scratch_fused[flash]")
    for mask in ("none", "causal"):
        assert saved_mib("scratch_flash", mask) == pytest.approx(saved_mib("torch", mask), rel=0.05)


def test_flash_block_benchmark_ranks_block_sizes(tmp_path: Path) -> None:
    main(
        [
            "flash-blocks",
            "--out",
            str(tmp_path),
            "--seq-lens",
            "64",
            "--block-sizes",
            "16",
            "64",
            "--batch",
            "2",
            "--d-model",
            "32",
            "--heads",
            "4",
            "--repeats",
            "1",
            "--min-time",
            "0.01",
        ]
    )
    rows = _table(tmp_path / "flash-blocks.md", ("block_q", "block_k"))
    assert set(rows) == {(q, k) for q in ("16", "64") for k in ("16", "64")}
    times = [float(row["fwd+bwd ms"]) for row in rows.values()]
    assert all(t > 0 for t in times) and times == sorted(times)  # fastest first


def test_flash_blocks_takes_only_the_kinds_with_blocks(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["flash-blocks", "--kinds", "scratch", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["flash-blocks", "--stages", "2"], "are for flash-blocks --kinds scratch_triton"),
        (["attention", "--warps", "8"], "are for flash-blocks --kinds scratch_triton"),
        (["flash-blocks", "--kinds", "scratch_triton", "--stages", "0"], "must be 1 or more"),
        (["flash-blocks", "--kinds", "scratch_triton", "--warps", "6"], "a power of two"),
    ],
)
def test_stages_and_warps_are_checked_before_anything_runs(
    command: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing measured, nothing written


def test_train_benchmark_compares_every_kind_to_torch(tmp_path: Path) -> None:
    main(
        [
            "train",
            "--out",
            str(tmp_path),
            "--experiments",
            "mnist_encoder",
            "--repeats",
            "2",
            "--min-time",
            "0.01",
            "--peak-tflops",
            "0.5",
        ]
    )
    table = _train_table(tmp_path / "train.md")
    assert set(table) == {("mnist_encoder", kind, "no") for kind in PORTABLE_KINDS}
    with (tmp_path / "train.csv").open() as handle:
        flops = {row["gflop_per_step"] for row in csv.DictReader(handle)}
    assert len(flops) == 1 and float(flops.pop()) > 0  # the model's FLOPs, whatever the kind
    for row in table.values():  # MFU: model TFLOP/s over the peak given
        tflops, mfu = float(row["model TFLOP/s"]), float(row["MFU"].rstrip("%")) / 100
        assert tflops > 0 and mfu == pytest.approx(tflops / 0.5, rel=0.01, abs=6e-4)
    torch_row = table["mnist_encoder", "torch", "no"]
    assert torch_row["vs torch"] == "1.00x" and torch_row["memory vs torch"] == "1.00x"
    for (_, kind, _), row in table.items():
        low, high = (float(x) for x in row["samples/s (range)"].split("–"))
        assert 0 < low <= float(row["samples/s (median)"]) <= high, kind
        mib = float(row["memory (MiB)"])
        # The table prints MiB to one decimal and the ratio of the unrounded values.
        ratio = mib / float(torch_row["memory (MiB)"])
        assert mib > 0 and float(row["memory vs torch"].rstrip("x")) == pytest.approx(
            ratio, abs=0.011
        )


@pytest.mark.slow
def test_train_benchmark_counts_translation_tokens_and_compiled_speedup(tmp_path: Path) -> None:
    main(
        [
            "train",
            "--out",
            str(tmp_path),
            "--experiments",
            "multi30k_transformer",
            "--kinds",
            "scratch",
            "--compile",
            "--seq-len",
            "5",
            "--repeats",
            "1",
            "--min-time",
            "0.01",
            "--overrides",
            "model.n_layers=1",
            "model.d_model=32",
            "data.vocab_size=100",
            "data.batch_size=4",
        ]
    )
    with (tmp_path / "train.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["compiled"] for row in rows} == {"False", "True"}
    for row in rows:  # every step trains 4 sentence pairs of 5 target tokens
        assert float(row["tokens_per_s"]) == pytest.approx(5 * float(row["samples_per_s"]))
    table = _train_table(tmp_path / "train.md")
    compiled_row = table["multi30k_transformer", "scratch", "yes"]
    vs_eager = compiled_row["vs eager"]
    assert vs_eager.endswith("x") and float(vs_eager[:-1]) > 0  # the speed-up over eager
    assert compiled_row["graph breaks"] == "0"  # one graph, dropout included
    assert table["multi30k_transformer", "scratch", "no"]["graph breaks"] == "–"
    # saved tensors of compiled graphs: not seen
    assert (compiled_row["memory (MiB)"], compiled_row["memory vs torch"]) == ("–", "–")
    assert ("multi30k_transformer", "scratch", "no") in table


def test_bert_base_minilm_and_vit_b_16_have_the_reference_sizes() -> None:
    """Built on the meta device (no memory): the parameter counts of the references."""
    with torch.device("meta"):
        bert = sized_model("bert_base", "scratch")
        vit = sized_model("vit_b_16", "scratch")
    # transformers' BertModel (bert-base-uncased) without its pooler, plus a 768 x 2 head
    assert sum(p.numel() for p in bert.parameters()) == 109_482_240 - 768 * 769 + 768 * 2 + 2
    assert sum(p.numel() for p in vit.parameters()) == 86_567_656  # torchvision's vit_b_16
    with torch.device("meta"):
        minilm = sized_model("minilm", "scratch")
    # all-MiniLM-L6-v2's BertModel (22,713,216 with its 384 x 385 pooler) plus a 384 x 2 head
    assert sum(p.numel() for p in minilm.parameters()) == 22_713_216 - 384 * 385 + 384 * 2 + 2


def test_train_benchmark_measures_bert_base_and_vit_b_16(tmp_path: Path, monkeypatch) -> None:
    """The plumbing, at tiny sizes: BERT-base counts its tokens, ViT-B/16 its images."""
    tiny = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32}
    monkeypatch.setitem(SIZED_MODELS, "bert_base", {**tiny, "vocab_size": 100})
    monkeypatch.setitem(SIZED_MODELS, "vit_b_16", {**tiny, "patch_size": 56})
    main(
        [
            "train",
            "--out",
            str(tmp_path),
            "--experiments",
            "bert_base",
            "vit_b_16",
            "--kinds",
            "scratch",
            "torch",
            "--sized-batch",
            "1",
            "--seq-len",
            "8",
            "--repeats",
            "1",
            "--min-time",
            "0.01",
        ]
    )
    with (tmp_path / "train.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["experiment"], row["kind"]) for row in rows} == {
        (name, kind) for name in ("bert_base", "vit_b_16") for kind in ("scratch", "torch")
    }
    for row in rows:
        tokens_per_sample = 8 if row["experiment"] == "bert_base" else 0
        assert float(row["tokens_per_s"]) == pytest.approx(
            tokens_per_sample * float(row["samples_per_s"])
        )
    table = _train_table(tmp_path / "train.md")
    assert table["vit_b_16", "torch", "no"]["vs torch"] == "1.00x"


def test_data_benchmark_runs_the_augmented_pipeline(tmp_path: Path, tiny_mnist: Path) -> None:
    main(
        [
            "data",
            "--out",
            str(tmp_path),
            "--experiments",
            "vit_mnist",
            "--repeats",
            "1",
            "--data-dir",
            str(tiny_mnist),
            "--overrides",
            "data.val_size=56",
        ]
    )
    assert "| vit_mnist |" in (tmp_path / "data.md").read_text()


def test_inference_benchmark_writes_its_own_table(tmp_path: Path) -> None:
    main(
        [
            "train",
            "--inference",
            "--out",
            str(tmp_path),
            "--experiments",
            "vit_mnist",
            "--repeats",
            "1",
            "--min-time",
            "0.01",
            "--overrides",
            "model.n_layers=1",
            "data.batch_size=8",
        ]
    )
    assert not (tmp_path / "train.md").exists()  # a training table is not overwritten
    table = _train_table(tmp_path / "inference.md")
    assert set(table) == {("vit_mnist", kind, "no") for kind in PORTABLE_KINDS}
    for row in table.values():
        assert float(row["samples/s (median)"]) > 0
        # inference saves nothing for backward
        assert (row["memory (MiB)"], row["memory vs torch"]) == ("–", "–")


@pytest.mark.parametrize("experiment", ["ud_pos_transformer", "sst2_transformer"])
def test_train_benchmark_measures_the_language_tasks(tmp_path: Path, experiment: str) -> None:
    args = ["train", "--out", str(tmp_path), "--experiments", experiment, "--seq-len", "6"]
    args += ["--kinds", "scratch", "torch", "--repeats", "1", "--min-time", "0.01"]
    args += ["--overrides", "model.n_layers=1", "model.d_model=32", "data.vocab_size=50"]
    main([*args, "data.batch_size=3"])
    with (tmp_path / "train.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["kind"] for row in rows} == {"scratch", "torch"}
    for row in rows:  # every step trains 3 sentences of 6 pieces
        assert float(row["tokens_per_s"]) == pytest.approx(6 * float(row["samples_per_s"]))
    assert _train_table(tmp_path / "train.md")[experiment, "torch", "no"]["vs torch"] == "1.00x"


def _over_pretrained_bert(experiment: str) -> bool:
    """Whether the experiment's model loads a pretrained BERT checkpoint (bench's BERT sizes
    stand for those models)."""
    defaults = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml").get("defaults", [])
    models = [d["override /model"] for d in defaults if "override /model" in d]
    return any(
        str(OmegaConf.load(CONF_DIR / "model" / f"{m}.yaml")._target_).startswith(
            "attention_lab.pretrained.bert"
        )
        for m in models
    )


@pytest.mark.parametrize(
    "experiment",
    [
        p.stem
        for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))
        if not _over_pretrained_bert(p.stem)
    ]
    + list(SIZED_MODELS),
)
def test_every_model_compiles_to_one_graph_with_every_portable_kind(
    experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``bench train --compile`` reports as graph breaks: none, for any kind (a break runs
    Python between graphs; the dropout seed's ``.item()`` once made one per attention layer).
    The experiments over a pretrained BERT (sst2_bert, *_minilm*) need its checkpoint: the BERT
    sizes (bert_base, minilm) stand for them. A BiLSTM reference breaks twice, by PyTorch's
    design: Dynamo does not trace packing (pack_padded_sequence) and RNN modules."""
    tiny = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32}
    monkeypatch.setitem(SIZED_MODELS, "bert_base", {**tiny, "vocab_size": 100})
    monkeypatch.setitem(SIZED_MODELS, "minilm", {**tiny, "vocab_size": 100})
    monkeypatch.setitem(SIZED_MODELS, "vit_b_16", {**tiny, "patch_size": 56})
    args = SimpleNamespace(
        device="cpu",
        precision="fp32",
        inference=False,
        seq_len=6,
        sized_batch=2,
        overrides=["data.batch_size=2"],
    )
    cfg = synthetic_config(experiment, args)
    if cfg is not None and "n_layers" in cfg.model:
        cfg.model.n_layers = 1  # a break would be in every layer alike
    if cfg is not None and "attention" not in cfg.model:  # a reference without attention
        expected = 2 if cfg.model._target_.endswith("BiLSTMTagger") else 0  # see below
        assert count_graph_breaks(args, experiment, cfg, NO_ATTENTION) == expected
        return
    for kind in PORTABLE_KINDS:
        assert count_graph_breaks(args, experiment, cfg, kind) == 0, kind
