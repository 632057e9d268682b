"""A real pretrained BERT in our hand-written modules gives what Hugging Face's ``BertModel``
gives: all-MiniLM-L6-v2 (6 layers, width 384, 12 heads, 22.7M parameters), loaded through the
code path users take (``attention_lab.pretrained``), on real sentences with padding, with every
attention kind that runs on the CPU; and our tokenizer gives the checkpoint's own tokenizer's ids.

Uses ``../shared/pretrained/all-MiniLM-L6-v2`` (or ``PRETRAINED_DIR``) when present; skipped with
the reason otherwise (the random-weight checks of ``test_pretrained.py`` always run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attention_lab.data.bert_tokenizer import BertTokenizer
from attention_lab.nn.attention import PORTABLE_KINDS
from attention_lab.pretrained import bert_from_pretrained
from tests.conftest import REPO_ROOT

transformers = pytest.importorskip("transformers")

MINILM = (
    Path(os.environ.get("PRETRAINED_DIR", REPO_ROOT.parent / "shared" / "pretrained"))
    / "all-MiniLM-L6-v2"
)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (MINILM / "model.safetensors").is_file(),
        reason=f"no all-MiniLM-L6-v2 checkpoint at {MINILM} (set PRETRAINED_DIR)",
    ),
]
ATOL = 1e-5
# Real sentences of different lengths (so that most rows are padded), with accents, numbers,
# words split into several pieces and punctuation.
SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "The old man the boat.",
    "It's a charming and often affecting journey, though Zoë's 1990s soundtrack overstays.",
    "unwatchable",
    "Ein Mann fährt Fahrrad; the tokenizer lower-cases and strips the accents (naïve café).",
]


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    model = transformers.BertModel.from_pretrained(MINILM, attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and padding mask (True = padding) from our tokenizer."""
    return BertTokenizer.from_pretrained(str(MINILM)).encode(SENTENCES)


def test_our_ids_are_the_checkpoints_tokenizers(batch) -> None:
    ids, padding = batch
    theirs = transformers.AutoTokenizer.from_pretrained(MINILM)(
        SENTENCES, padding=True, return_tensors="pt"
    )
    assert torch.equal(ids, theirs["input_ids"])
    assert torch.equal(padding, theirs["attention_mask"] == 0)
    assert padding.any(dim=1).sum() == len(SENTENCES) - 1  # all but the longest are padded
    words = BertTokenizer.from_pretrained(str(MINILM)).encode_words([["Zoë's", "soundtrack"]])
    their_words = transformers.AutoTokenizer.from_pretrained(MINILM)(
        [["Zoë's", "soundtrack"]], is_split_into_words=True
    )
    assert words[0] == [their_words["input_ids"][0]]
    assert words[1] == [[-1 if w is None else w for w in their_words.word_ids(0)]]


@pytest.mark.parametrize("attention", PORTABLE_KINDS)
def test_hidden_states_and_pooled_output_match_transformers(
    reference: torch.nn.Module, batch, attention: str
) -> None:
    ids, padding = batch
    ours = bert_from_pretrained(str(MINILM), attention=attention).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    with torch.no_grad():
        mine = ours(ids, padding)
        theirs = reference(input_ids=ids, attention_mask=(~padding).long())
    keep = ~padding  # padded positions' states are not defined alike (nobody reads them)
    error = (mine.last_hidden_state - theirs.last_hidden_state)[keep].abs().max().item()
    assert error <= ATOL, f"last hidden state off by {error:.2e}"
    pooled_error = (mine.pooled - theirs.pooler_output).abs().max().item()
    assert pooled_error <= ATOL, f"pooled output off by {pooled_error:.2e}"
    # Not trivially equal: the states of different sentences differ.
    assert mine.last_hidden_state[0, 0].sub(mine.last_hidden_state[1, 0]).abs().max() > 0.1
