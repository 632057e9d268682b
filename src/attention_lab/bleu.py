"""The two BLEU scores that translation results are reported with, as torchmetrics objects.

``bleu`` (logged as ``val/bleu``, ``test/bleu``) is SacreBLEU, the score to compare across
papers: detokenised, cased hypotheses against the raw references, tokenised inside the metric
by SacreBLEU's standard "13a" rules (signature ``nrefs:1|case:mixed|tok:13a|smooth:exp``).

``bleu_lc`` (``val/bleu_lc``, ``test/bleu_lc``) is the lowercased, tokenised BLEU that Multi30k
papers (multi-bleu.perl on lowercased Moses-tokenised text) and the PyTorch seq2seq tutorials
(torchtext's ``bleu_score`` on lowercased spaCy tokens) report: hypotheses and references are
lowercased and split into words and punctuation marks by ``bleu_tokenize``, then scored with
the same corpus BLEU-4 and no further tokenisation (``tok:none``). It is usually higher than
``bleu``, since case errors no longer count; different word tokenisers (Moses, spaCy, this
one) split a few words differently and so move it slightly.

Both are corpus-level BLEU-4 with the brevity penalty; torchmetrics returns a fraction, logged
here multiplied by 100 as papers print it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torchmetrics.text import SacreBLEUScore

# A number with its separators, a word (hyphenated words stay whole, as in Moses), a clitic
# such as 's or 't split off as its own token (Moses and spaCy do the same), or one symbol.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:-\w+)*|'\w+|[^\w\s]")


def bleu_tokenize(text: str) -> str:
    """Lowercase ``text`` and put spaces between words and punctuation marks.

    "A man's T-shirt, 1,000 times." -> "a man 's t-shirt , 1,000 times ."
    """
    return " ".join(_TOKEN.findall(text.lower()))


class CorpusBLEU(SacreBLEUScore):
    """SacreBLEU ("13a", cased) on raw text, or the lowercased tokenised BLEU (``lowercase``).

    ``update`` takes detokenised hypotheses and one raw reference per hypothesis in both
    cases; the lowercased variant runs ``bleu_tokenize`` on them itself.
    """

    def __init__(self, *, lowercase_tokenized: bool = False) -> None:
        if lowercase_tokenized:
            super().__init__(tokenize="none", lowercase=True)
        else:
            super().__init__(tokenize="13a", lowercase=False)
        self.lowercase_tokenized = lowercase_tokenized

    def update(self, hypotheses: Sequence[str], references: Sequence[str]) -> None:
        """Add hypotheses and their references (one raw reference each)."""
        if self.lowercase_tokenized:
            hypotheses = [bleu_tokenize(h) for h in hypotheses]
            references = [bleu_tokenize(r) for r in references]
        super().update(list(hypotheses), [[r] for r in references])
