"""``experiment=sst2_bert``: SST-2 tokenised by a pretrained checkpoint's own tokenizer, and the
course's frozen-BERT model trained on it, end to end on a tiny random BERT (no network).

The checkpoint is ``tests/conftest.py``'s ``tiny_bert_dir``, with a vocabulary that covers the
tiny SST-2 phrases and whose special tokens are not at the project's own ids ([PAD] 2, [CLS] 4,
[SEP] 1), so nothing may assume those. The commands on such runs: ``test_pretrained_runs.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from attention_lab.data import SST2DataModule
from attention_lab.errors import ConfigError
from attention_lab.run.training import train
from tests.conftest import BERT_VOCAB, ComposeFn

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def sst2_bert_dir(tiny_bert_dir: Path) -> Path:
    """The tiny random BERT of ``tests/conftest.py``: a local ``bert-base-uncased`` in
    miniature."""
    return tiny_bert_dir


def test_sst2_ids_are_the_checkpoint_tokenizers(sst2_bert_dir: Path, tiny_sst2: Path) -> None:
    """[CLS] pieces [SEP] as transformers' BertTokenizerFast gives them, padded with the
    checkpoint's [PAD] id, with the padding mask in the batch."""
    data = SST2DataModule(data_dir=str(tiny_sst2), tokenizer=str(sst2_bert_dir), max_len=512)
    data.prepare_data()
    data.setup("fit")
    reference = transformers.BertTokenizerFast(str(sst2_bert_dir / "vocab.txt"))
    assert data.pad_id == 2 and data.vocab_size == len(BERT_VOCAB)
    batch = next(iter(data.val_dataloader()))
    expected = reference(batch.texts, padding=True, return_tensors="pt")
    assert torch.equal(batch.ids, expected["input_ids"])
    assert torch.equal(batch.padding, expected["attention_mask"] == 0)
    assert batch.ids[:, 0].eq(4).all() and batch.ids[batch.padding].eq(2).all()
    assert (batch.padding[:, -1]).any()  # the phrases differ in length: some rows are padded
    assert "##ty" in reference.convert_ids_to_tokens(data.encode(["a gorgeous , witty film"])[0][0])


def test_sst2_cuts_at_the_checkpoints_positions(
    sst2_bert_dir: Path, tiny_sst2: Path, tmp_path: Path
) -> None:
    """Sentences are cut at max_position_embeddings (here 4) even with data.max_len=512,
    keeping [SEP] last; the count of cut sentences is reported."""
    short = tmp_path / "short"
    shutil.copytree(sst2_bert_dir, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4}))
    data = SST2DataModule(data_dir=str(tiny_sst2), tokenizer=str(short), max_len=512)
    ids, cut = data.encode(["a dull , tedious mess", "awful"])
    assert data.max_tokens == 4 and cut == 1
    word = BERT_VOCAB.index
    assert ids == [[4, word("a"), word("dull"), 1], [4, word("awful"), 1]]


def test_unknown_tokenizer_names_the_setting(tiny_sst2: Path, monkeypatch) -> None:
    """Neither a kind nor a local dir nor reachable: one error naming data.tokenizer."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = SST2DataModule(data_dir=str(tiny_sst2), tokenizer=str(tiny_sst2 / "no-such-bert"))
    with pytest.raises(ConfigError, match=r"data\.tokenizer=.*no-such-bert"):
        data.prepare_data()


@pytest.mark.parametrize("freeze", [True, False])
def test_sst2_bert_runs_a_step(
    compose_config: ComposeFn, sst2_bert_dir: Path, tiny_sst2: Path, tmp_path: Path, freeze: bool
) -> None:
    """The experiment trains a step and tests; frozen, only the head's weights change."""
    changes = tmp_path / "changes.json"
    cfg = compose_config(
        "experiment=sst2_bert",
        f"model.pretrained={sst2_bert_dir}",
        f"model.freeze_body={str(freeze).lower()}",
        "debug=fast_dev_run",
        "logger=csv",
        "+callbacks.changes._target_=tests.callbacks.RecordParameterChange",
        f"+callbacks.changes.path={changes}",
        data_dir=tiny_sst2,
    )
    assert cfg.data.tokenizer == str(sst2_bert_dir)
    metrics = train(cfg)
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0
    # The attention-map callback drew the BERT blocks' maps at test.
    assert list((Path(cfg.paths.output_dir) / "attention").rglob("*.png"))
    changed = json.loads(changes.read_text())
    head = {n: c for n, c in changed.items() if n.startswith("net.head.")}
    body = {n: c for n, c in changed.items() if n.startswith("net.body.")}
    assert set(head) == {"net.head.weight", "net.head.bias"} and all(head.values())
    assert len(body) > 10
    if freeze:
        assert not any(body.values())
        assert metrics["params"] == 2 * 32 + 2  # the head only
    else:
        # Every body weight that the loss reaches changes ([PAD]'s and unused rows aside).
        assert body["net.body.token_embedding.weight"]
        assert all(c for n, c in body.items() if "blocks" in n)


def test_sst2_bert_offline_stops_before_training(
    compose_config: ComposeFn, tiny_sst2: Path, monkeypatch
) -> None:
    """Without the checkpoint and without the hub, one error naming model.pretrained."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_config(
        "experiment=sst2_bert",
        "model.pretrained=/nonexistent/bert",
        "debug=fast_dev_run",
        data_dir=tiny_sst2,
    )
    with pytest.raises(ConfigError, match=r"model\.pretrained=/nonexistent/bert"):
        train(cfg)
