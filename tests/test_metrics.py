"""Metrics on hand-checked toy cases, and E2E BLEU/NIST against the official script's output."""
import math

import pytest

import metrics
from common import mirror_file
from data.tasks import read_e2e

has_java = metrics.java_missing() is None


def test_mteval_tokenization():
    assert metrics.mteval_tokenize("The Vaults, near Café Adriatic, costs £30-40.") == \
        ["the", "vaults", ",", "near", "café", "adriatic", ",", "costs", "£30", "-", "40", "."]
    assert metrics.mteval_tokenize("3.5 stars, 1,000 &amp; (more)") == \
        ["3.5", "stars", ",", "1,000", "&", "(", "more", ")"]


def test_bleu_by_hand():
    # p1..p4 = 5/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5)
    bleu, _ = metrics.mteval_bleu_nist(["the cat sat on mat"], [["the cat sat on the mat"]])
    assert bleu == pytest.approx((1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25 * math.exp(-0.2), abs=1e-12)
    # case-insensitive; identical output scores 1
    assert metrics.mteval_bleu_nist(["The Cat Sat On The Mat ."], [["the cat sat on the mat ."]])[0] == pytest.approx(1.0)
    # no 4-gram match: mteval smooths that precision to 1 / (2 * count)
    bleu, _ = metrics.mteval_bleu_nist(["a b c x d"], [["a b c y d"]])
    p = [4 / 5, 2 / 4, 1 / 3, 1 / (2 * 2)]
    assert bleu == pytest.approx(math.prod(p) ** 0.25, abs=1e-12)


def test_multi_reference_bleu_uses_closest_length_ties_to_shorter():
    # candidate of 4 words, references of 3 and 5 words: tie -> the shorter (3) -> no brevity penalty
    bleu, _ = metrics.mteval_bleu_nist(["a b c d"], [["a b c", "a b c d e"]])
    p = [4 / 4, 3 / 3, 2 / 2, 1 / 1]  # every n-gram appears in the 5-word reference
    assert bleu == pytest.approx(math.prod(p) ** 0.25)
    # the 6-word reference alone would have penalized it: exp(1 - 6/4)
    bleu6, _ = metrics.mteval_bleu_nist(["a b c d"], [["a b c d e f"]])
    assert bleu6 == pytest.approx(math.exp(1 - 6 / 4))


def test_nist_by_hand():
    # reference words: a, b (2 in all). info(a) = info(b) = log2(2/1) = 1; info(a b) = log2(1/1) = 0
    _, nist = metrics.mteval_bleu_nist(["a b"], [["a b"]])
    assert nist == pytest.approx((1 + 1) / 2 + 0 / 1)
    # a one-word output against that reference: (info(a) / 1) * length penalty at ratio 1/2
    _, nist = metrics.mteval_bleu_nist(["a"], [["a b"]])
    beta = -math.log(0.5) / math.log(1.5) ** 2
    assert nist == pytest.approx(1.0 * math.exp(-beta * math.log(0.5) ** 2))


@pytest.mark.slow
@pytest.mark.skipif(mirror_file("e2e/test.txt") is None, reason="needs the data mirror")
def test_e2e_bleu_nist_match_official_script():
    """Golden values from tuetschek/e2e-metrics' mteval-v13a-sig.pl scoring code (run under Perl on
    these exact inputs, SGML files built as its measure_scores.py builds them): every E2E test MR
    'answered' with the first reference of the next MR, scored against its own references."""
    groups = read_e2e(mirror_file("e2e/test.txt"))
    refs = [g["refs"] for g in groups]
    hyps = [refs[(i + 1) % len(refs)][0] for i in range(len(refs))]
    bleu, nist = metrics.mteval_bleu_nist(hyps, refs)
    assert 100 * bleu == pytest.approx(36.8194, abs=1e-4)  # official: BLEU 0.368194
    assert nist == pytest.approx(6.0332, abs=1e-4)  # official: NIST 6.0332
    own = metrics.mteval_bleu_nist([rs[-1] for rs in refs], refs)
    assert own[0] == pytest.approx(1.0) and own[1] == pytest.approx(14.1563, abs=1e-4)


def test_sacrebleu_and_ter():
    refs = [["the cat sat on the mat", "a cat was on the mat"], ["hello there"]]
    assert metrics.sacre_bleu(["the cat sat on the mat", "hello there"], refs) == pytest.approx(100.0)
    assert metrics.sacre_bleu(["x y z", "q"], refs) < 5
    # TER: best single reference per sentence; 1 edit over 4 words, then a perfect match
    assert metrics.mean_best_ter(["a b c e", "hello there"], [["a b c d", "zzz"], ["hello there"]]) == \
        pytest.approx((1 / 4 + 0) / 2)


@pytest.mark.slow
def test_coco_scores_and_missing_java(monkeypatch):
    hyps, refs = ["the cat sat on the mat", "a dog runs"], [["the cat sat on the mat"], ["a dog runs"]]
    good = metrics.coco_scores(hyps, refs, which=("rouge_l",) + (("meteor",) if has_java else ()))
    assert good["rouge_l"] == pytest.approx(1.0)
    if has_java:
        assert good["meteor"] > 0.9
    bad = metrics.coco_scores(["zebra", "quantum"], refs, which=("rouge_l",))
    assert bad["rouge_l"] == 0.0
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    out = metrics.coco_scores(hyps, refs, which=("meteor", "rouge_l"))
    assert "meteor" not in out and "Java" in out["meteor_missing"] and out["rouge_l"] == pytest.approx(1.0)


def test_nlg_metrics_keys(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)  # keep this test Java-free and fast
    hyps, refs = ["the cat sat on the mat", "a dog"], [["the cat sat on the mat"], ["a dog barks"]]
    e2e = metrics.nlg_metrics("e2e", hyps, refs)
    assert {"bleu", "nist", "rouge_l", "cider", "meteor_missing"} <= set(e2e)
    web = metrics.nlg_metrics("webnlg", hyps, refs, seen=[True, False])
    assert {"bleu", "ter", "seen", "unseen"} <= set(web)
    assert web["seen"]["bleu"] == pytest.approx(100.0) and web["seen"]["ter"] == 0.0
    assert web["unseen"]["ter"] == pytest.approx(1 / 3)
