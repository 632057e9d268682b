"""A pretrained BERT's own WordPiece tokenizer, through Hugging Face ``tokenizers``.

Read from the checkpoint's ``tokenizer.json``, or built from its ``vocab.txt`` with the
library's WordPiece model and BERT normaliser (no hand-written WordPiece). The special-token ids
are the checkpoint's, as they are: [PAD] is 0 in ``bert-base-uncased`` but [CLS] is 101, unlike
the project's own subword tokenizer (``data.tokenizer``), whose <pad>..<unk> are 0..3.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from torch import Tensor

from attention_lab.errors import ConfigError
from attention_lab.hub import SETTING, resolve_bert_dir


class BertTokenizer:
    """The checkpoint's WordPiece tokenizer (Hugging Face ``tokenizers``), ids as it has them."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        ids = {token: tokenizer.token_to_id(token) for token in ("[PAD]", "[CLS]", "[SEP]")}
        if None in ids.values():
            lacking = ", ".join(t for t, i in ids.items() if i is None)
            raise ConfigError(f"{SETTING}: the tokenizer has no {lacking} token")
        self.pad_id, self.cls_id, self.sep_id = ids.values()
        self.unk_id = tokenizer.token_to_id("[UNK]")

    @classmethod
    def from_pretrained(cls, pretrained: str, setting: str = SETTING) -> BertTokenizer:
        """From ``tokenizer.json`` if the checkpoint has one, else from ``vocab.txt``;
        ``pretrained`` is a directory or a hub id, ``setting`` the config key it came from."""
        folder = resolve_bert_dir(pretrained, setting)
        if (folder / "tokenizer.json").exists():
            return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
        if not (folder / "vocab.txt").exists():
            raise ConfigError(f"{setting}={pretrained} has neither tokenizer.json nor vocab.txt")
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        lowercase = config.get("do_lower_case", True)
        tokenizer = Tokenizer(models.WordPiece.from_file(str(folder / "vocab.txt")))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        if cls_id is not None and sep_id is not None:
            tokenizer.post_processor = processors.BertProcessing(
                ("[SEP]", sep_id), ("[CLS]", cls_id)
            )
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str], *, max_len: int = 512) -> tuple[Tensor, Tensor]:
        """[CLS] text [SEP] per text, truncated to ``max_len`` and padded to the longest:
        (ids (B, T), key_padding_mask (B, T), True = padding)."""
        self.tokenizer.enable_truncation(max_len)
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings])  # (B, T)
        padding = torch.tensor([e.attention_mask for e in encodings]) == 0  # (B, T)
        return ids, padding

    def encode_each(
        self, texts: Sequence[str], *, max_len: int = 512
    ) -> tuple[list[list[int]], int]:
        """[CLS] text [SEP] per text, unpadded, truncated to ``max_len`` ([SEP] kept last), and
        how many texts were truncated."""
        self.tokenizer.enable_truncation(max_len)
        self.tokenizer.no_padding()
        encodings = self.tokenizer.encode_batch(list(texts))
        return [e.ids for e in encodings], sum(bool(e.overflowing) for e in encodings)

    def encode_words(
        self, sentences: Sequence[Sequence[str]]
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Sentences given as words -> ([CLS] pieces [SEP], the word index of each piece, -1
        for [CLS] and [SEP]); never truncated (a tag per word needs every word)."""
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        encodings = self.tokenizer.encode_batch([list(s) for s in sentences], is_pretokenized=True)
        ids = [e.ids for e in encodings]
        word_ids = [[-1 if w is None else w for w in e.word_ids] for e in encodings]
        return ids, word_ids

    def to_str(self) -> str:
        """The tokenizer as JSON (kept in a run's checkpoint; ``from_str`` reads it back)."""
        return self.tokenizer.to_str()

    @classmethod
    def from_str(cls, text: str) -> BertTokenizer:
        """The tokenizer that ``to_str`` wrote."""
        return cls(Tokenizer.from_str(text))

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The token of each id, special tokens included (labels for attention maps)."""
        return [self.tokenizer.id_to_token(i) for i in ids]

    id_to_piece = tokens  # the name the project's own tokenizer gives it (attention-map labels)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens dropped."""
        return self.tokenizer.decode(list(ids))
