"""Shared fixtures: tiny MNIST-format and Multi30k-format data written by the tests, and config
composition.

No test here needs the network or ../shared/data; tests marked ``integration`` use the real
data sets when DATA_DIR (or ../shared/data) has them and are skipped otherwise.
"""

from __future__ import annotations

import gzip
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

# Without CUDA, the Triton kernels (model.attention=scratch_triton) run in Triton's CPU
# interpreter, so that the CPU-only suite covers them too. Triton reads this as it defines a
# kernel, so it is set before any test imports one; subprocesses inherit it.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# The suite runs in pytest-xdist workers (``-n auto`` in pyproject.toml): each takes its share
# of the cores, so that workers do not fight over threads; the subprocesses they start too.
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (pyproject.toml): one worker per core, as pytest-xdist decides, but one
    process for the GPU tests (``-m gpu``), which share one device and time it."""
    marks = config.getoption("markexpr") or ""
    return 0 if "gpu" in marks and "not gpu" not in marks else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Where triton is not installed (it ships with PyTorch's Linux wheels only), every test
    case of the Triton kind is skipped, saying why, rather than failing."""
    from attention_lab.nn import triton_flash

    if (problem := triton_flash.available()) is None:
        return
    for item in items:
        params = getattr(item, "callspec", None)
        if params and {"scratch_triton", "triton"} & set(map(str, params.params.values())):
            item.add_marker(pytest.mark.skip(reason=problem))


REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """Write (N, 28, 28) uint8 images in the IDX3 format MNIST uses."""
    n, rows, cols = images.shape
    path.write_bytes(
        struct.pack(">IIII", 0x0803, n, rows, cols) + images.astype(np.uint8).tobytes()
    )


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """Write (N,) uint8 labels in the IDX1 format MNIST uses."""
    path.write_bytes(struct.pack(">II", 0x0801, len(labels)) + labels.astype(np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is the row of a bright bar, on noise: learnable, not trivially so.

    Class c draws a bar on pixel rows 2c+4 and 2c+5 at a random horizontal offset, so a model
    must find *where* the bar is; a pixel-row tokeniser sees it in one token.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for image, label in zip(images, labels, strict=True):
        start = rng.integers(0, 14)
        image[2 * label + 4 : 2 * label + 6, start : start + 14] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_tiny_mnist(root: Path, n_train: int = 256, n_test: int = 64) -> Path:
    """Write the four MNIST IDX files under ``root/MNIST/raw``; returns ``root``."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with 256 training and 64 test images of ``synthetic_digits``."""
    return make_tiny_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def learnable_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with 2,048 training and 512 test images of ``synthetic_digits``."""
    return make_tiny_mnist(tmp_path_factory.mktemp("data_learn"), n_train=2048, n_test=512)


# Caption-like German/English phrase pairs; their combinations make a tiny parallel corpus.
SUBJECTS = [
    ("Ein Mann", "A man"),
    ("Eine Frau", "A woman"),
    ("Ein Kind", "A child"),
    ("Ein Hund", "A dog"),
    ("Ein Mädchen", "A girl"),
    ("Zwei Jungen", "Two boys"),
]
VERBS = [("läuft", "runs"), ("sitzt", "sits"), ("spielt", "plays"), ("wartet", "waits")]
PLACES = [
    ("im Park", "in the park"),
    ("auf der Straße", "on the street"),
    ("am Strand", "on the beach"),
    ("im Schnee", "in the snow"),
    ("vor dem Haus", "in front of the house"),
]


def phrase_pairs(seed: int = 0) -> list[tuple[str, str]]:
    """All 120 (German, English) sentences of ``SUBJECTS`` x ``VERBS`` x ``PLACES``, shuffled.

    "Zwei Jungen" takes the plural verb in neither language: good enough for a tokenizer.
    """
    pairs = [
        (f"{de_s} {de_v} {de_p}.", f"{en_s} {en_v} {en_p}.")
        for de_s, en_s in SUBJECTS
        for de_v, en_v in VERBS
        for de_p, en_p in PLACES
    ]
    random.Random(seed).shuffle(pairs)
    return pairs


def write_gzip_lines(path: Path, lines: list[str]) -> None:
    """One line per string, gzip-compressed, as the Multi30k files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.writelines(line + "\n" for line in lines)


def make_tiny_multi30k(root: Path, sizes: tuple[int, int, int] = (88, 16, 16)) -> Path:
    """Write train/val/test_2016_flickr .de.gz and .en.gz under ``root/multi30k``; returns root."""
    pairs = phrase_pairs()
    start = 0
    for name, size in zip(("train", "val", "test_2016_flickr"), sizes, strict=True):
        chunk = pairs[start : start + size]
        start += size
        write_gzip_lines(root / "multi30k" / f"{name}.de.gz", [de for de, _ in chunk])
        write_gzip_lines(root / "multi30k" / f"{name}.en.gz", [en for _, en in chunk])
    return root


@pytest.fixture(scope="session")
def tiny_multi30k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir whose multi30k/ holds 88 / 16 / 16 phrase pairs (``phrase_pairs``)."""
    return make_tiny_multi30k(tmp_path_factory.mktemp("data_multi30k"))


ComposeFn = Callable[..., DictConfig]
# An experiment's config -> (tiny data dir, data setting, test metric, its upper bound)
TinyDataFn = Callable[[DictConfig], tuple[Path, str, str, float]]


@pytest.fixture
def compose_config(tmp_path: Path) -> ComposeFn:
    """Compose ``conf/train.yaml`` with overrides, writing outputs under ``tmp_path``."""

    def _compose(
        *overrides: str, data_dir: Path | None = None, with_hydra: bool = False
    ) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                config_name="train", overrides=list(overrides), return_hydra_config=with_hydra
            )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            if data_dir is not None:
                cfg.paths.data_dir = str(data_dir)
        return cfg

    return _compose


def real_data_dir(dataset: str = "MNIST/raw") -> Path | None:
    """The folder holding the real data sets (DATA_DIR, else ../shared/data), if it has
    ``dataset`` (a subfolder: "MNIST/raw", "multi30k")."""
    candidate = Path(os.environ.get("DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    return candidate if (candidate / dataset).is_dir() else None


def train_py_env(data_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's ``python train.py`` here: no W&B credentials or network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    # PYTHONPATH: this checkout's code, also where the package is installed from another one.
    env.update(
        DATA_DIR=str(data_dir),
        HOME=str(home),
        PYTHONPATH=str(REPO_ROOT / "src"),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def run_train_py(
    *overrides: str, data_dir: Path, home: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python train.py OVERRIDES`` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=REPO_ROOT,
        env=train_py_env(data_dir, home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# A toy language for tagging: the tag of most words is fixed, "run" and "watch" are a NOUN after
# a determiner and a VERB after a noun, so a tagger needs the context as well as the word.
TOY_LEXICON = {
    "DET": ["the", "a", "every", "this"],
    "ADJ": ["old", "green", "tiny", "happy", "loud"],
    "NOUN": ["man", "boat", "dog", "city", "garden", "teacher"],
    "VERB": ["sees", "likes", "paints", "follows"],
    "PUNCT": [".", "!"],
}
AMBIGUOUS = ["run", "watch"]


def toy_tagged_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """``n`` sentences DET [ADJ] NOUN|run VERB|run DET NOUN PUNCT of (word, UPOS) pairs."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = [(rng.choice(TOY_LEXICON["DET"]), "DET")]
        if rng.random() < 0.5:
            words.append((rng.choice(TOY_LEXICON["ADJ"]), "ADJ"))
        subject = rng.choice(AMBIGUOUS) if rng.random() < 0.3 else rng.choice(TOY_LEXICON["NOUN"])
        words.append((subject, "NOUN"))
        verb = rng.choice(AMBIGUOUS) if rng.random() < 0.3 else rng.choice(TOY_LEXICON["VERB"])
        words.append((verb, "VERB"))
        words += [
            (rng.choice(TOY_LEXICON["DET"]), "DET"),
            (rng.choice(TOY_LEXICON["NOUN"]), "NOUN"),
        ]
        words.append((rng.choice(TOY_LEXICON["PUNCT"]), "PUNCT"))
        sentences.append(words)
    return sentences


def write_conllu(path: Path, sentences: list[list[tuple[str, str]]]) -> None:
    """Gzip CoNLL-U with comments; XPOS is the UPOS in lower case. Every third sentence gets a
    multiword token line and an empty node, which a reader must skip."""
    lines = []
    for number, words in enumerate(sentences):
        lines += [f"# sent_id = toy-{number}", "# text = " + " ".join(w for w, _ in words)]
        for i, (word, tag) in enumerate(words, start=1):
            if number % 3 == 0 and i == 1:
                lines.append(f"1-2\t{word}{words[1][0]}\t_\t_\t_\t_\t_\t_\t_\t_")
            lines.append(f"{i}\t{word}\t{word}\t{tag}\t{tag.lower()}\t_\t0\tdep\t_\t_")
            if number % 3 == 0 and i == 2:
                lines.append("2.1\tghost\tghost\tVERB\tverb\t_\t_\t_\t0:dep\t_")
        lines.append("")
    write_gzip_lines(path, lines)


def make_tiny_ud(root: Path, sizes: tuple[int, int, int] = (240, 40, 40)) -> Path:
    """Write en_ewt-ud-{train,dev,test}.conllu.gz of the toy language under
    ``root/ud_english_ewt``; returns ``root``."""
    for split, size, seed in zip(("train", "dev", "test"), sizes, (0, 1, 2), strict=True):
        path = root / "ud_english_ewt" / f"en_ewt-ud-{split}.conllu.gz"
        write_conllu(path, toy_tagged_sentences(size, seed))
    return root


@pytest.fixture(scope="session")
def tiny_ud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir whose ud_english_ewt/ holds 240 / 40 / 40 toy sentences."""
    return make_tiny_ud(tmp_path_factory.mktemp("data_ud"))


POSITIVE = ["a gorgeous , witty film", "warm and funny", "a moving , beautiful story", "brilliant"]
NEGATIVE = ["a dull , tedious mess", "boring and flat", "an ugly , stupid film", "awful"]


def make_tiny_sst2(root: Path, sizes: tuple[int, int, int] = (160, 32, 32)) -> Path:
    """Write sst2/{train,dev,test}.tsv.gz of short phrases; returns ``root``."""
    rng = random.Random(0)
    for name, size in zip(("train", "dev", "test"), sizes, strict=True):
        rows = []
        for _ in range(size):
            label = rng.randrange(2)
            rows.append(f"{rng.choice(POSITIVE if label else NEGATIVE)}\t{label}")
        write_gzip_lines(root / "sst2" / f"{name}.tsv.gz", ["sentence\tlabel", *rows])
    return root


@pytest.fixture(scope="session")
def tiny_sst2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir whose sst2/ holds 160 / 32 / 32 labelled phrases."""
    return make_tiny_sst2(tmp_path_factory.mktemp("data_sst2"))


# A tiny random BERT checkpoint whose vocabulary covers the tiny SST-2 phrases and the toy
# tagging language, with special tokens away from the project's own ids ([PAD] 2, [CLS] 4,
# [SEP] 1), so that nothing may assume those.
BERT_SPECIALS = ["[UNK]", "[SEP]", "[PAD]", "[MASK]", "[CLS]"]
BERT_WORDS = sorted(
    (
        {w for phrase in POSITIVE + NEGATIVE for w in phrase.split()}
        | {w for words in TOY_LEXICON.values() for w in words}
        | set(AMBIGUOUS)
    )
    - {"witty"}
)
BERT_VOCAB = [*BERT_SPECIALS, *BERT_WORDS, "wit", "##ty"]  # "witty" becomes two pieces


def make_tiny_bert(folder: Path, **config: Any) -> Path:
    """A random two-layer BERT (width 32, 4 heads) saved by ``transformers`` as a checkpoint
    directory with ``vocab.txt``: a local ``bert-base-uncased`` in miniature."""
    transformers = pytest.importorskip("transformers")
    settings = {
        "vocab_size": len(BERT_VOCAB),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "pad_token_id": 2,
        **config,
    }
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**settings)).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT checkpoint directory (``make_tiny_bert``)."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def tiny_data_for(
    tiny_mnist: Path, tiny_multi30k: Path, tiny_ud: Path, tiny_sst2: Path
) -> TinyDataFn:
    """For an experiment's composed config: the tiny data set of its kind (written by the
    fixtures), the data setting that fits it, its test metric and the metric's upper bound."""

    def _for(cfg: DictConfig) -> tuple[Path, str, str, float]:
        data = cfg.data
        if data._target_.endswith("Multi30kDataModule"):
            return tiny_multi30k, "data.vocab_size=200", "test/bleu", 100
        if data._target_.endswith("UDDataModule"):
            return tiny_ud, "data.vocab_size=100", "test/acc", 1
        if data._target_.endswith("SST2DataModule"):
            return tiny_sst2, "data.vocab_size=100", "test/acc", 1
        # An experiment without a validation split (the course notebooks') keeps none.
        val_size = "data.val_size=0" if data.val_size == 0 else "data.val_size=56"
        return tiny_mnist, val_size, "test/acc", 1

    return _for
