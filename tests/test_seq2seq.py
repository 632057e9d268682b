"""The seq2seq transformer: masks that leak nothing, decoding, learning, training, translating."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from attention_lab.cli.translate import load_translator
from attention_lab.data.multi30k import Multi30kDataModule
from attention_lab.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from attention_lab.errors import ConfigError
from attention_lab.models import Seq2SeqTransformer
from attention_lab.models.decoding import beam_search, greedy_decode
from attention_lab.nn.attention import ATTENTION_KINDS
from attention_lab.nn.blocks import DecoderBlock, keep_attention_weights
from attention_lab.run.records import METRICS_FILE
from attention_lab.run.training import train
from attention_lab.tasks import TranslationTask
from tests.conftest import REPO_ROOT, ComposeFn
from tests.wandb_records import read_offline_run

KINDS = ["scratch", "torch"]
SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "dropout": 0.0, "max_len": 32}


def _model(attention: str = "scratch", vocab: int = 20, **kwargs) -> Seq2SeqTransformer:
    settings = {**SMALL, "src_vocab_size": vocab, "tgt_vocab_size": vocab, **kwargs}
    return Seq2SeqTransformer(**settings, attention=attention).eval()


def _random_ids(batch: int, length: int, vocab: int = 20) -> torch.Tensor:
    return torch.randint(4, vocab, (batch, length))  # real tokens: no <pad>, <bos>, <eos>


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_causal_mask_leaks_nothing(attention: str) -> None:
    torch.manual_seed(0)
    model = _model(attention)
    src, tgt = _random_ids(3, 7), _random_ids(3, 9)
    changed = tgt.clone()
    t = 5
    changed[:, t] = (tgt[:, t] - 4 + 1) % 16 + 4  # another real token
    before, after = model(src, tgt), model(src, changed)  # (B, T, V)
    torch.testing.assert_close(before[:, :t], after[:, :t], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, t:], after[:, t:], atol=1e-4)


@pytest.mark.parametrize("attention", KINDS)
def test_source_padding_changes_nothing(attention: str) -> None:
    torch.manual_seed(0)
    model = _model(attention)
    src, tgt = _random_ids(3, 7), _random_ids(3, 9)
    src[1, 4:] = PAD_ID  # a shorter sentence in the batch
    padded = torch.cat([src, torch.full((3, 5), PAD_ID)], dim=1)  # (B, S + 5)
    torch.testing.assert_close(model(src, tgt), model(padded, tgt), atol=1e-5, rtol=0)


@pytest.mark.parametrize("other", ["torch", "scratch_fused", "scratch_flash"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_every_attention_kind_computes_the_same_function(norm_first: bool, other: str) -> None:
    # The decoder passes the causal hint: the flash kernel skips blocks instead of masking them.
    torch.manual_seed(0)
    scratch = _model("scratch", norm_first=norm_first)
    reference = _model(other, norm_first=norm_first)
    reference.load_state_dict(scratch.state_dict())
    src, tgt = _random_ids(4, 6), _random_ids(4, 8)
    src[0, 3:], tgt[2, 5:] = PAD_ID, PAD_ID
    out = scratch(src, tgt)
    torch.testing.assert_close(out, reference(src, tgt), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", KINDS)
@pytest.mark.parametrize("norm_first", [True, False])
def test_one_step_at_a_time_decoding_matches_the_full_decoder(
    attention: str, norm_first: bool
) -> None:
    torch.manual_seed(0)
    model = _model(attention, norm_first=norm_first)
    src, tgt = _random_ids(3, 6), _random_ids(3, 7)
    src[2, 4:], tgt[1, 5:] = PAD_ID, PAD_ID  # a finished sentence is continued with padding
    memory, src_padding = model.encode(src)
    full = model.decode(tgt, memory, src_padding)  # (B, T, V)
    cache = None
    for t in range(1, tgt.size(1) + 1):
        logits, cache = model.decode_step(tgt[:, :t], memory, src_padding, cache)  # (B, V)
        torch.testing.assert_close(logits, full[:, t - 1], atol=1e-5, rtol=0)
    assert len(cache) == 2 and cache[0].shape == (3, 7, 16)


def test_decoder_blocks_keep_cross_attention_only_when_asked() -> None:
    model = _model()
    src, tgt = _random_ids(2, 6), _random_ids(2, 4)
    src[0, 4:] = PAD_ID
    model(src, tgt)
    decoders = [b for b in model.modules() if isinstance(b, DecoderBlock)]
    assert all(b.cross_attention_weights is None for b in decoders)
    with keep_attention_weights(model) as blocks:
        model(src, tgt)
        assert len(blocks) == 4 and blocks[2:] == decoders  # encoder blocks first
        cross = decoders[0].cross_attention_weights  # (B, H, T, S)
        causal = decoders[0].self_attention_weights  # (B, H, T, T)
    assert cross.shape == (2, 2, 4, 6) and causal.shape == (2, 2, 4, 4)
    torch.testing.assert_close(cross.sum(-1), torch.ones(2, 2, 4))
    assert (cross[0, :, :, 4:] == 0).all()  # no attention to source padding
    assert (causal.triu(diagonal=1) == 0).all()  # none to later target positions
    assert all(b.cross_attention_weights is None and not b.keep_attention for b in decoders)


def test_output_projection_is_tied_to_the_target_embedding() -> None:
    tied, untied = _model(tie_embeddings=True), _model(tie_embeddings=False)
    assert tied.to_logits.weight is tied.tgt_embedding.weight
    assert untied.to_logits.weight is not untied.tgt_embedding.weight
    assert sum(p.numel() for p in tied.parameters()) < sum(p.numel() for p in untied.parameters())


def test_shared_embeddings_are_one_matrix_for_both_languages_and_the_output() -> None:
    shared = _model(share_embeddings=True)
    assert shared.src_embedding.weight is shared.tgt_embedding.weight is shared.to_logits.weight
    assert _model().src_embedding.weight is not _model().tgt_embedding.weight
    with pytest.raises(ValueError, match=r"src_vocab_size=20 and tgt_vocab_size=30 \(set data"):
        _model(share_embeddings=True, tgt_vocab_size=30)


def test_beam_search_of_width_one_is_greedy_decoding() -> None:
    torch.manual_seed(0)
    model = _model(vocab=12)
    src = _random_ids(6, 5, vocab=12)
    settings = {"bos_id": BOS_ID, "eos_id": EOS_ID, "max_len": 10}
    greedy = greedy_decode(model, src, **settings)
    assert greedy == beam_search(model, src, beam_size=1, length_penalty=0.6, **settings)
    assert all(len(ids) <= 10 and EOS_ID not in ids for ids in greedy)


def test_beam_size_below_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="beam_size=0 must be at least 1"):
        beam_search(_model(), _random_ids(1, 3), bos_id=1, eos_id=2, max_len=5, beam_size=0)


def _reversal_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Source: 3 to 7 digits (ids 4..13) then <eos>; target: <bos>, the digits reversed, <eos>."""
    src = torch.full((batch, 8), PAD_ID)
    tgt = torch.full((batch, 9), PAD_ID)
    lengths = torch.randint(3, 8, (batch,), generator=generator)
    for row, n in enumerate(lengths.tolist()):
        digits = torch.randint(4, 14, (n,), generator=generator)
        src[row, : n + 1] = torch.cat([digits, torch.tensor([EOS_ID])])
        reversed_digits = [BOS_ID, *digits.flip(0).tolist(), EOS_ID]
        tgt[row, : n + 2] = torch.tensor(reversed_digits)
    return src, tgt


@pytest.mark.slow
@pytest.mark.parametrize("attention", KINDS)
def test_the_model_learns_to_reverse_digits(attention: str) -> None:
    torch.manual_seed(0)
    model = Seq2SeqTransformer(
        src_vocab_size=14,
        tgt_vocab_size=14,
        d_model=32,
        n_heads=4,
        n_layers=2,
        d_ff=64,
        dropout=0.0,
        max_len=16,
        attention=attention,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        src, tgt = _reversal_batch(64, generator)
        logits = model(src, tgt[:, :-1])  # (B, T-1, V)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    src, tgt = _reversal_batch(200, torch.Generator().manual_seed(1))
    expected = [[i for i in row if i not in (PAD_ID, BOS_ID, EOS_ID)] for row in tgt.tolist()]
    settings = {"bos_id": BOS_ID, "eos_id": EOS_ID, "max_len": 10}
    greedy = greedy_decode(model, src, **settings)
    beam = beam_search(model, src, beam_size=4, length_penalty=0.6, **settings)
    exact = sum(g == e for g, e in zip(greedy, expected, strict=True)) / len(expected)
    agree = sum(g == b for g, b in zip(greedy, beam, strict=True)) / len(expected)
    assert exact >= 0.95, f"greedy exact match {exact:.2f}"
    assert agree >= 0.95, f"greedy and beam agree on {agree:.2f}"


def _tiny_run(*extra: str) -> list[str]:
    return [
        "experiment=multi30k_transformer",
        "model.d_model=32",
        "model.n_heads=4",
        "model.n_layers=1",
        "model.d_ff=64",
        "data.vocab_size=200",
        "data.batch_size=32",
        "task.beam_size=2",
        "task.max_extra_len=5",
        *extra,
    ]


def _run(args: list[str], home: Path, data_dir: Path) -> subprocess.CompletedProcess:
    """A command as a user runs it, without W&B credentials or network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(DATA_DIR=str(data_dir), HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_train_py_logs_translation_metrics_and_its_checkpoint_translates(
    tmp_path: Path, tiny_multi30k: Path
) -> None:
    run_dir = tmp_path / "run"
    result = _run(
        ["train.py", *_tiny_run("debug=smoke"), f"hydra.run.dir={run_dir}"], tmp_path, tiny_multi30k
    )
    assert result.returncode == 0, result.stdout + result.stderr

    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    assert metrics["monitor"] == "val/bleu"
    assert {"test/loss", "test/ppl", "test/bleu", "test/bleu_lc"} <= set(metrics["test"])
    assert metrics["test"]["test/ppl"] > 1.0
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    logged = read_offline_run(offline_run)
    assert logged["config"]["model"]["src_vocab_size"] > 4  # filled in from the tokenizer
    history = {key: value for row in logged["history"] for key, value in row.items()}
    assert {"train/loss_step", "val/loss", "val/ppl", "val/bleu", "val/bleu_lc"} <= set(history)
    assert history["val/samples/_type"] == "table-file"
    table = json.loads((offline_run / "files" / history["val/samples/path"]).read_text())
    assert table["columns"] == ["source", "reference", "hypothesis"] and len(table["data"]) == 8

    # The checkpoint holds the tokenizers, the run's config the model settings: no data needed.
    # metrics.json names it relative to the run directory.
    assert not Path(metrics["best_checkpoint"]).is_absolute()
    ckpt = run_dir / metrics["best_checkpoint"]
    sentences = ["Ein Hund läuft im Park.", "Eine Frau sitzt am Strand."]
    result = _run(
        ["-m", "attention_lab.cli.translate", f"ckpt={ckpt}", *sentences], tmp_path, tmp_path
    )
    assert result.returncode == 0, result.stderr
    translator = load_translator(ckpt)  # beam search of width 2, as the run tested
    assert translator.beam_size == 2
    assert translator(sentences) == result.stdout.splitlines()


def test_the_task_labels_cross_attention_for_alignment_maps(tiny_multi30k: Path) -> None:
    datamodule = Multi30kDataModule(data_dir=str(tiny_multi30k), vocab_size=200)
    datamodule.prepare_data()
    net = _model(vocab=datamodule.src_vocab_size, n_layers=2)
    task = TranslationTask(net, optimizer=partial(torch.optim.AdamW), n_samples=2)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (results,) = trainer.validate(task, datamodule=datamodule)
    assert {"val/loss", "val/ppl", "val/bleu", "val/bleu_lc"} <= set(results)
    assert len(task.samples) == 2  # (source, reference, hypothesis) rows for the W&B table

    batch = next(iter(datamodule.val_dataloader()))
    maps = task.labelled_attention([part[:3] for part in batch])
    names = [name for name, *_ in maps]
    assert names == [
        "encoder/layer0",
        "encoder/layer1",
        "decoder/layer0/self",
        "decoder/layer0/cross",
        "decoder/layer1/self",
        "decoder/layer1/cross",
    ]
    _, cross, queries, keys = maps[3]
    assert cross.shape == (3, 2, batch.tgt.size(1) - 1, batch.src.size(1))
    assert queries[0][0] == "<bos>" and keys[0][-1] in ("<eos>", "<pad>")
    assert len(queries[0]) == cross.size(2) and len(keys[0]) == cross.size(3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.attention=flash"], "model.attention='flash' is not a known attention kind"),
        (["data.tokenizer=wordpiece"], "data.tokenizer='wordpiece' is not a known tokenizer"),
        (["task.beam_size=0"], "task.beam_size=0 must be at least 1"),
        (["task.val_decoding=sample"], "task.val_decoding='sample' is not a known decoding"),
    ],
)
def test_bad_translation_settings_are_reported_before_training(
    compose_config: ComposeFn, tiny_multi30k: Path, overrides: list[str], message: str
) -> None:
    cfg = compose_config(*_tiny_run(*overrides, "logger=none"), data_dir=tiny_multi30k)
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_translate_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "attention_lab.cli.translate", f"ckpt={tmp_path / 'no'}", "Hallo."],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "ckpt=" in result.stderr and "is not a file" in result.stderr
