"""CTC for text recognition (class 0 is the blank, classes 1.. the characters): the training loss, best-path
(greedy) decoding and lexicon-constrained decoding as in CRNN (Shi, Bai & Yao 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist
from torch import Tensor

BLANK = 0
_CHUNK = 1024  # lexicon candidates scored per ctc_loss call (bounds memory on short words with many neighbours)


def _log_probs(logits: Tensor) -> Tensor:
    """float32 log-softmax over the classes (log-probabilities pass through unchanged)."""
    return F.log_softmax(logits.float(), dim=-1)


def frame_alignment(logits: Tensor) -> list[int]:
    """The best class of each frame of one T x K score map (0: blank), before CTC collapses it."""
    return logits.argmax(dim=-1).tolist()


def _collapse(frames: Sequence[int]) -> list[int]:
    """CTC's many-to-one map: merge runs of one class, then drop the blanks ("-hh-e-ll-l-oo" -> "hello")."""
    return [c for i, c in enumerate(frames) if c != BLANK and (i == 0 or c != frames[i - 1])]


def greedy_decode(logits: Tensor) -> tuple[list[list[int]], Tensor]:
    """Best-path decoding of N x T x K scores: per sample the collapsed classes (1..K-1) and a confidence, the
    probability of that best path (the product over frames of each frame's top probability), a float32 tensor (N,)
    in 0..1 on the logits' device."""
    top, best = _log_probs(logits).max(dim=-1)
    return [_collapse(frames) for frames in best.tolist()], top.sum(dim=1).exp()


def _as_text(classes: Sequence[int]) -> str:
    """A class sequence as a string of code points, so rapidfuzz compares it at C speed."""
    return "".join(map(chr, classes))


def ctc_loss(logits: Tensor, targets: Sequence[Sequence[int]]) -> Tensor:
    """Mean over the batch of each sample's CTC negative log-likelihood divided by its target length (torch's
    reduction="mean"; an empty target counts as length 1), on float32 log-softmax of N x T x K logits. A target
    that no alignment of T frames can produce (too long, or too many repeats) gives 0 loss and no gradient
    (zero_infinity) instead of inf."""
    log_probs = _log_probs(logits).transpose(0, 1)  # T x N x K, as torch wants it
    frames, batch = log_probs.shape[:2]
    flat = torch.tensor([c for target in targets for c in target], dtype=torch.long, device=logits.device)
    lengths = torch.tensor([len(target) for target in targets], dtype=torch.long, device=logits.device)
    return F.ctc_loss(log_probs, flat, torch.full((batch,), frames, dtype=torch.long, device=logits.device),
                      lengths, blank=BLANK, reduction="mean", zero_infinity=True)


def _log_likelihoods(log_probs: Tensor, words: Sequence[Sequence[int]]) -> Tensor:
    """log p(word | one sample's T x K log-probabilities) of each word, summed over all its CTC alignments
    (-inf for a word no alignment of T frames produces)."""
    scores = []
    for start in range(0, len(words), _CHUNK):
        chunk = words[start:start + _CHUNK]
        n = len(chunk)
        flat = torch.tensor([c for word in chunk for c in word], dtype=torch.long, device=log_probs.device)
        lengths = torch.tensor([len(word) for word in chunk], dtype=torch.long, device=log_probs.device)
        frames = torch.full((n,), log_probs.shape[0], dtype=torch.long, device=log_probs.device)
        batch = log_probs.unsqueeze(1).expand(-1, n, -1)
        scores.append(-F.ctc_loss(batch, flat, frames, lengths, blank=BLANK, reduction="none"))
    return torch.cat(scores)


def lexicon_decode(logits: Tensor, greedy: Sequence[Sequence[int]], lexicon: Sequence[Sequence[int]],
                   max_distance: int = 3) -> list[int]:
    """Lexicon-constrained CTC decoding (Shi et al. 2015, sec. 2.3.2): per sample, the lexicon index of the word
    of highest CTC likelihood among those within `max_distance` edits (Levenshtein) of its greedy decoding; where
    none is that close, of those nearest by edit distance. `logits`: N x T x K scores or log-probabilities;
    `greedy`: greedy_decode's class lists; `lexicon`: each word's classes."""
    log_probs = _log_probs(logits)
    words = [_as_text(word) for word in lexicon]
    distances = cdist([_as_text(g) for g in greedy], words, scorer=Levenshtein.distance)  # N x len(lexicon)
    picked = []
    for i, row in enumerate(distances):
        near = (row <= max_distance).nonzero()[0]
        if not len(near):
            near = (row == row.min()).nonzero()[0]
        if len(near) == 1:
            picked.append(int(near[0]))
            continue
        scores = _log_likelihoods(log_probs[i], [lexicon[j] for j in near])
        picked.append(int(near[int(scores.argmax())]))
    return picked
