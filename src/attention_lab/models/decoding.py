"""Turning a trained ``Seq2SeqTransformer`` into translations: greedy decoding and beam search.

Both work on a batch of source sentences and return, per sentence, the generated token ids
without the start and end tokens. The source is encoded once; each step computes only the
newest target position (``Seq2SeqTransformer.decode_step``, which keeps the decoder blocks'
inputs of earlier positions). ``max_len`` counts generated tokens, the end token included, and
is capped so that positions stay within the model's ``max_len``. (Hugging Face's ``generate``
would need the model wrapped as a ``transformers`` model; these work on ``decode_step`` directly.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from attention_lab.models.seq2seq import Seq2SeqTransformer


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def _generation_limit(model: Seq2SeqTransformer, max_len: int) -> int:
    if max_len < 1:
        raise ValueError(f"max_len={max_len} must be at least 1 (tokens to generate)")
    return min(max_len, model.max_len - 1)  # the start token takes one position


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqTransformer, src: Tensor, *, bos_id: int, eos_id: int, max_len: int
) -> list[list[int]]:
    """The most probable next token at every step, until each sentence has produced its end
    token or ``max_len`` tokens. src: (B, S) token ids -> B lists of token ids."""
    max_len = _generation_limit(model, max_len)
    memory, src_padding = model.encode(src)  # (B, S, E), (B, S)
    tokens = src.new_full((src.size(0), 1), bos_id)  # (B, 1)
    finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)  # (B,)
    cache = None
    for _ in range(max_len):
        logits, cache = model.decode_step(tokens, memory, src_padding, cache)  # (B, V)
        next_token = logits.argmax(dim=-1).masked_fill(finished, model.pad_id)  # (B,)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, t + 1)
        finished |= next_token == eos_id
        if finished.all():
            break
    return [_until_eos(row, eos_id) for row in tokens[:, 1:].tolist()]


def length_penalty_factor(length: int, alpha: float) -> float:
    """GNMT's length penalty lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al., 2016, eq. 14).

    Hypotheses are ranked by log P(Y | X) / lp(Y); alpha = 0 ranks by log-probability alone,
    which favours short outputs, larger alpha favours longer ones.
    """
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    src: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int,
    beam_size: int = 5,
    length_penalty: float = 0.6,
) -> list[list[int]]:
    """Beam search with GNMT's length penalty; src: (B, S) token ids -> B lists of token ids.

    Keeps the ``beam_size`` best unfinished prefixes of each sentence. At every step, the best
    ``2 * beam_size`` extensions are ranked; those among the first ``beam_size`` that end with the
    end token become finished hypotheses, and the best ``beam_size`` that do not end carry on.
    A sentence is done when it has ``beam_size`` finished hypotheses (as fairseq does); at
    ``max_len`` its unfinished prefixes count as finished. The answer: the finished hypothesis
    with the highest log-probability / lp (``length_penalty_factor``); ``beam_size=1`` is greedy.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size} must be at least 1 (1 is greedy decoding)")
    max_len = _generation_limit(model, max_len)
    batch, k = src.size(0), beam_size
    memory, src_padding = (x.repeat_interleave(k, dim=0) for x in model.encode(src))  # (B*K, ...)
    tokens = src.new_full((batch * k, 1), bos_id)  # (B*K, 1)
    # Only the first beam is live at the start, else all K beams would pick the same tokens.
    scores = torch.full((batch, k), float("-inf"), device=src.device)  # (B, K) sum of log-probs
    scores[:, 0] = 0.0
    finished = _Finished(batch, src.device)
    first_row = torch.arange(batch, device=src.device)[:, None] * k  # (B, 1)
    cache = None

    for step in range(max_len):
        logits, cache = model.decode_step(tokens, memory, src_padding, cache)  # (B*K, V)
        log_probs = logits.log_softmax(dim=-1)
        vocab = log_probs.size(-1)
        candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)  # (B, K*V)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # (B, 2K)
        top_beam, top_token = top_index // vocab, top_index % vocab  # (B, 2K), (B, 2K)
        ends = top_token == eos_id  # (B, 2K)

        # Extensions that end, ranked among the first K, become finished hypotheses.
        finishing = ends[:, :k] & (finished.count < k)[:, None] & top_scores[:, :k].isfinite()
        normalised = top_scores[:, :k] / length_penalty_factor(step + 1, length_penalty)
        finished.offer(normalised, first_row + top_beam[:, :k], tokens, finishing)
        if (finished.count >= k).all():
            break

        # The best K extensions that do not end carry on (at most K of the 2K end).
        scores, pick = top_scores.masked_fill(ends, float("-inf")).topk(k, dim=-1)  # (B, K)
        rows = (first_row + top_beam.gather(1, pick)).view(-1)  # (B*K,)
        tokens = torch.cat([tokens[rows], top_token.gather(1, pick).view(-1, 1)], dim=1)
        cache = [inputs[rows] for inputs in cache]  # each (B*K, t, E), following its beam
    else:
        # Out of steps: the unfinished prefixes of sentences that are not done compete too.
        normalised = scores / length_penalty_factor(max_len, length_penalty)  # (B, K)
        beams = first_row + torch.arange(k, device=src.device)  # (B, K)
        finished.offer(normalised, beams, tokens, (finished.count < k)[:, None].expand(-1, k))
    return finished.tokens


class _Finished:
    """Per sentence of a beam search: its best finished hypothesis so far (by score over the
    length penalty) and how many hypotheses have finished."""

    def __init__(self, batch: int, device: torch.device) -> None:
        self.score = torch.full((batch,), float("-inf"), device=device)  # (B,)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.count = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)

    def offer(self, normalised: Tensor, rows: Tensor, tokens: Tensor, finishing: Tensor) -> None:
        """Count the hypotheses where ``finishing`` (B, N), and keep per sentence the best of
        their ``normalised`` scores (B, N) where it beats the best so far: the hypothesis is
        the prefix ``tokens[rows[b, n]]`` without its <bos>."""
        self.count += finishing.sum(dim=-1)
        normalised = normalised.masked_fill(~finishing, float("-inf"))
        step_best, pick = normalised.max(dim=-1)  # (B,), (B,)
        for b in (step_best > self.score).nonzero().flatten().tolist():
            self.tokens[b] = tokens[rows[b, pick[b]], 1:].tolist()
            self.score[b] = step_best[b]
