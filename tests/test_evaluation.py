"""Exact match and token accuracy by hand-counted cases; BLEU against a textbook
implementation of Papineni et al. (2002)."""

import collections
import math

import numpy as np
import pytest

from flaxformer_lite.evaluation import corpus_bleu, exact_match, token_accuracy
from flaxformer_lite.special_tokens import EOS_ID, PAD_ID

E, P = EOS_ID, PAD_ID
TARGETS = np.array(
    [
        [5, 6, E, P],
        [5, 6, E, P],
        [5, 6, E, P],
        [5, 6, E, P],
        [7, 8, 9, E],
    ]
)
PREDICTIONS = np.array(  # wider than the targets
    [
        [5, 6, E, 9, 9],  # equal up to EOS; what follows EOS is ignored
        [5, 6, 7, E, P],  # one token too many: the EOS is misplaced
        [5, E, P, P, P],  # stops early
        [5, 6, 6, 6, 6],  # never ends
        [7, 8, 9, E, P],  # equal
    ]
)


def test_exact_match_compares_up_to_and_including_eos():
    assert exact_match(PREDICTIONS, TARGETS) == pytest.approx(2 / 5)
    assert exact_match(TARGETS, TARGETS) == 1.0
    assert exact_match(TARGETS[:, :2], TARGETS) == 0.0  # no EOS, no match


def test_token_accuracy_counts_target_tokens_with_eos_and_without_pad():
    # Row by row: 3/3, 2/3 (EOS misplaced), 1/3, 2/3, 4/4.
    assert token_accuracy(PREDICTIONS, TARGETS) == pytest.approx((3 + 2 + 1 + 2 + 4) / 16)
    assert token_accuracy(TARGETS, TARGETS) == 1.0


def textbook_bleu(hypotheses, references, max_order=4):
    """Corpus BLEU for whitespace-tokenised text whose n-gram matches are all non-zero."""
    matches, totals = [0] * max_order, [0] * max_order
    hypothesis_length = reference_length = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp, ref = hypothesis.split(), reference.split()
        hypothesis_length += len(hyp)
        reference_length += len(ref)
        for n in range(1, max_order + 1):
            hyp_ngrams = collections.Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
            ref_ngrams = collections.Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum((hyp_ngrams & ref_ngrams).values())  # clipped counts
            totals[n - 1] += sum(hyp_ngrams.values())
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_order
    brevity = min(0.0, 1.0 - reference_length / hypothesis_length)
    return 100.0 * math.exp(brevity + log_precision)


def test_corpus_bleu_matches_the_textbook_formula_and_reports_its_signature():
    hypotheses = [
        "the cat sat on the mat today",
        "a quick brown fox jumps over the dog",
        "it is a nice day",  # shorter than its reference: the brevity penalty applies
    ]
    references = [
        "the cat sat on the mat",
        "the quick brown fox jumps over the lazy dog",
        "it is a very nice day today",
    ]
    score, signature = corpus_bleu(hypotheses, references)
    assert 0.0 < score < 100.0
    assert score == pytest.approx(textbook_bleu(hypotheses, references), abs=1e-9)
    for part in ("nrefs:1", "tok:13a", "smooth:exp", "version:"):
        assert part in signature
    assert corpus_bleu(references, references)[0] == pytest.approx(100.0)


def test_corpus_bleu_needs_one_reference_per_hypothesis():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a b", "c d"], ["a b"])
