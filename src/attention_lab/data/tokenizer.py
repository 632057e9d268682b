"""Subword tokenisation with Hugging Face ``tokenizers``: BPE or unigram, trained on our data.

Text is split at whitespace the SentencePiece way (``Metaspace``: a word's first piece carries
"▁", the space before it) and punctuation is split off, so subwords never span a word and a
punctuation mark. Decoding glues the pieces together and turns "▁" back into spaces, so
``decode(encode(text)) == text`` for text with single spaces and characters seen in training.

Special tokens have fixed ids in every vocabulary: <pad> = 0, <bos> = 1, <eos> = 2, <unk> = 3;
a tokenizer trained with ``cls_token=True`` (for classification) also has <cls> = 4.

Words already split (CoNLL-U, tagging) go through ``encode_words``: every piece comes with the
index of the word it belongs to, as Hugging Face's ``word_ids``. A word whose pre-tokenisation
splits off punctuation ("." becomes "▁" and ".") loses the bare "▁" piece: it only says that a
word starts, which the word index already says, and it would be the first piece of every
punctuation word.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from attention_lab.errors import ConfigError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))
CLS_TOKEN = "<cls>"
CLS_ID = len(SPECIAL_TOKENS)  # 4, in the tokenizers trained with ``cls_token=True``
TOKENIZER_KINDS = ("bpe", "unigram", "word")
WORD_START = "▁"  # Metaspace's marker of a word's start


class WordPieces(NamedTuple):
    """The pieces of a sentence of given words: ``word_ids[i]`` is the word of ``ids[i]``."""

    ids: list[int]
    word_ids: list[int]


class SubwordTokenizer:
    """Text <-> subword ids for one vocabulary; a thin, typed wrapper of ``tokenizers.Tokenizer``.

    ``encode`` adds no special tokens: where <bos> and <eos> go is the data module's business.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != expected_id:
                raise ValueError(
                    f"tokenizer maps {token} to {tokenizer.token_to_id(token)}, not {expected_id}"
                )
        self.tokenizer = tokenizer

    @classmethod
    def train(
        cls, texts: Sequence[str], *, kind: str, vocab_size: int, cls_token: bool = False
    ) -> SubwordTokenizer:
        """Learn a ``kind`` ("bpe", "unigram" or "word") vocabulary of at most ``vocab_size``
        pieces; ``cls_token`` adds <cls> (id ``CLS_ID``) to the special tokens. "word" keeps
        whole words as the text separates them by spaces, the ``vocab_size`` most frequent, the
        rest <unk>: the input of the classic word-level models.

        A small corpus can give fewer pieces than asked for; ``vocab_size`` tells how many.
        """
        check_tokenizer_settings(kind=kind, vocab_size=vocab_size)
        specials = [*SPECIAL_TOKENS, CLS_TOKEN] if cls_token else list(SPECIAL_TOKENS)
        if kind == "bpe":
            tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size, special_tokens=specials, show_progress=False
            )
        elif kind == "word":
            tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
            trainer = trainers.WordLevelTrainer(
                vocab_size=vocab_size, special_tokens=specials, show_progress=False
            )
        else:
            tokenizer = Tokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(
                vocab_size=vocab_size,
                special_tokens=specials,
                unk_token="<unk>",
                show_progress=False,
            )
        tokenizer.normalizer = normalizers.NFC()
        splits = [pre_tokenizers.Metaspace()]
        if kind != "word":  # subwords never cross punctuation; words keep theirs ("n't")
            splits.append(pre_tokenizers.Punctuation())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(splits)
        tokenizer.decoder = decoders.Metaspace()
        tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
        return cls(tokenizer)

    @classmethod
    def from_file(cls, path: str | Path) -> SubwordTokenizer:
        """Load a tokenizer saved with ``save``."""
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, json: str) -> SubwordTokenizer:
        """Load a tokenizer from the JSON string of ``to_str``."""
        return cls(Tokenizer.from_str(json))

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as one JSON file."""
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included; every id is below it."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text``, without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts at once (in parallel)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    @property
    def cls_id(self) -> int:
        """The id of <cls>; a ``ValueError`` for a tokenizer trained without it."""
        if self.tokenizer.token_to_id(CLS_TOKEN) != CLS_ID:
            raise ValueError(f"this tokenizer has no {CLS_TOKEN} token (train it with cls_token)")
        return CLS_ID

    def encode_words(self, words: Sequence[str]) -> WordPieces:
        """Pieces of the given words (no special tokens), each with the index of its word."""
        return self.encode_words_batch([words])[0]

    def encode_words_batch(self, sentences: Sequence[Sequence[str]]) -> list[WordPieces]:
        """``encode_words`` for many sentences at once (in parallel)."""
        encodings = self.tokenizer.encode_batch(
            [list(words) for words in sentences], is_pretokenized=True, add_special_tokens=False
        )
        marker = self.tokenizer.token_to_id(WORD_START)
        out = []
        for encoding in encodings:
            pairs = list(zip(encoding.ids, encoding.word_ids, strict=True))
            lengths = Counter(word for _, word in pairs)
            # A bare "▁" is dropped where its word has other pieces (see the module docstring).
            kept = [(i, w) for i, w in pairs if i != marker or lengths[w] == 1]
            out.append(WordPieces([i for i, _ in kept], [w for _, w in kept]))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenised text of ``ids``; special tokens (<unk> too) are left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def pieces(self, text: str) -> list[str]:
        """The subword strings of ``text``, for inspection and attention-map labels."""
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def id_to_piece(self, ids: Sequence[int]) -> list[str]:
        """The subword string of each id, special tokens included: labels for attention maps."""
        return [self.tokenizer.id_to_token(i) for i in ids]

    def to_str(self) -> str:
        """The tokenizer as a JSON string."""
        return self.tokenizer.to_str()


def check_tokenizer_settings(*, kind: str, vocab_size: int) -> None:
    """Raise a ``ConfigError`` naming the ``data.`` key for an unknown kind or too small a size."""
    if kind not in TOKENIZER_KINDS:
        raise ConfigError(
            f"data.tokenizer={kind!r} is not a known tokenizer kind; choose one of "
            f"{', '.join(TOKENIZER_KINDS)}"
        )
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(
            f"data.vocab_size={vocab_size} leaves no room beyond the {len(SPECIAL_TOKENS)} special "
            f"tokens; use a few thousand"
        )


def fingerprint(texts: Sequence[str]) -> str:
    """A short hash of a corpus, so a cached tokenizer is only reused for the text it learnt."""
    digest = hashlib.sha1()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\n")
    return digest.hexdigest()[:10]


def load_or_train(
    texts: Sequence[str],
    *,
    kind: str,
    vocab_size: int,
    cache_file: Path | None,
    cls_token: bool = False,
) -> SubwordTokenizer:
    """The tokenizer in ``cache_file`` if it exists, else one trained on ``texts`` and saved there.

    The caller puts the settings (``cls_token`` too) and ``fingerprint(texts)`` in the file
    name. A cache file that cannot be written (a read-only data folder) is logged and skipped:
    training again takes seconds and gives the same vocabulary.
    """
    if cache_file is not None and cache_file.is_file():
        log.info("Tokenizer: %s", cache_file)
        return SubwordTokenizer.from_file(cache_file)
    tokenizer = SubwordTokenizer.train(texts, kind=kind, vocab_size=vocab_size, cls_token=cls_token)
    if cache_file is None:
        return tokenizer
    partial = cache_file.with_name(cache_file.name + ".part")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(partial)
        partial.replace(cache_file)  # a reader never sees a half-written cache
        log.info("Tokenizer trained (%d pieces) and cached: %s", tokenizer.vocab_size, cache_file)
    except OSError as err:
        log.warning(
            "Tokenizer trained (%d pieces) but not cached: cannot write %s (%s). It is trained "
            "again each run; set data.tokenizer_dir to a writable folder to keep it.",
            tokenizer.vocab_size,
            cache_file,
            err.strerror or err,
        )
    return tokenizer
