"""Metrics on hand-checked toy cases, and E2E BLEU/NIST against the official script's output."""
import math

import pytest

import metrics
from data.sources import mirror_file
from data.tasks import read_e2e

has_java = metrics.java_missing() is None
has_meteor = has_java and metrics.coco_missing("meteor.meteor") is None


def test_mteval_tokenization():
    assert metrics.mteval_tokenize("The Vaults, near Café Adriatic, costs £30-40.") == \
        ["the", "vaults", ",", "near", "café", "adriatic", ",", "costs", "£30", "-", "40", "."]
    assert metrics.mteval_tokenize("3.5 stars, 1,000 &amp; (more)") == \
        ["3.5", "stars", ",", "1,000", "&", "(", "more", ")"]


def test_mteval_whitespace_is_perls_not_pythons():
    # Official: tuetschek/e2e-metrics measure_scores.run_mteval (mteval-v13a-sig.pl, Perl 5.36) on these
    # lines gives BLEU 0.7144 (71.4447 by hand: p1..p4 = 8/9, 6/7, 4/5, 2/3, brevity exp(1 - 10/9)):
    # Perl's \s does not match U+001C-U+001F, so "the\x1cfood" stays one word (results/metrics.md).
    hyps, refs = ["the\x1cfood is good here", "a pub near the river"], [["the food is good here"], ["a pub near the river"]]
    bleu, _ = metrics.mteval_bleu_nist(hyps, refs)
    assert 100 * bleu == pytest.approx(100 * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25 * math.exp(1 - 10 / 9), abs=1e-9)
    assert round(100 * bleu, 4) == 71.4447
    for char in "\x1c\x1d\x1e\x1f\u200b\ufeff":  # not whitespace to Perl (checked one by one as above)
        assert len(metrics.mteval_tokenize(f"a{char}b")) == 1
    for char in "\x0b\x85\xa0\u2009\u2028\u3000":  # whitespace to Perl: BLEU 1 in the same check
        assert metrics.mteval_tokenize(f"a{char}b") == ["a", "b"]


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


# WebNLG/DART: GenerationEval's eval.py. Golden numbers from running it unmodified (eval.run(), nltk 3.5,
# pyter3 0.3, English Punkt, Perl 5.36, METEOR 1.5 = pycocoevalcap's jar under Java 17) on files written
# as LoRA's gpt2_decode.py --tokenize --lower writes them (6 references, trailing newline); METEOR on the
# same files without the trailing newline, on which eval.py's METEOR fails. Commands: results/metrics.md.
PINNED = dict(
    hyps=["Alan Bean was born in Wheeler, Texas. He was a test pilot.",
          "the the the the the the",  # degenerate
          "",  # empty
          "ALAN BEAN WAS BORN IN WHEELER, TEXAS.",  # upper-case
          "alan Bean Was born in wheeler , texas",  # mixed case, pre-tokenized
          "Aarhus\u00a0Airport serves the city of Aarhus,\u2009Denmark.",  # non-ASCII whitespace
          "Ciudad Ayala is in México; its population is 1,777,539 people.",
          "The runway length of Aarhus Airport is 2,702.0 metres (8,865 ft).",
          "He said \"it's 20-25 £\" -- and can't stop... gonna go!"],
    refs=[["Alan Bean was born in Wheeler, Texas and served as a test pilot.",
           "Born in Wheeler, Texas, Alan Bean was a test pilot."],
          ["The Acharya Institute of Technology is in Bangalore."],
          ["Aarhus is served by Aarhus Airport.", "Aarhus Airport serves Aarhus."],
          ["Alan Bean was born in Wheeler, Texas."],
          ["Alan Bean was born in Wheeler, Texas.", "Wheeler, Texas is the birthplace of Alan Bean."],
          ["Aarhus Airport serves the city of Aarhus,\u00a0Denmark.",
           "The city of Aarhus in Denmark is served by Aarhus Airport."],
          ["Ciudad Ayala, in Mexico, has a population of 1,777,539.",
           "The population of Ciudad Ayala, México is 1,777,539."],
          ["Aarhus Airport's runway is 2702.0 metres long.", "The runway at Aarhus Airport is 2,702.0 m long.",
           "Aarhus Airport has a runway length of 2702.0."],
          ["He said \"it's 20-25 £\" - and cannot stop... going to go!"]])
UPPER = dict(hyps=["ALAN BEAN WAS BORN IN WHEELER, TEXAS. HE WAS A TEST PILOT.", "AARHUS AIRPORT SERVES THE CITY OF AARHUS."],
             refs=[["Alan Bean was born in Wheeler, Texas. He was a test pilot."],
                   ["Aarhus Airport serves the city of Aarhus.", "Aarhus is served by Aarhus Airport."]])
ZERO_4GRAM = dict(hyps=["Aarhus Airport serves", "Texas pilot born"],
                  refs=[["Aarhus Airport serves Aarhus."], ["Alan Bean was born in Texas."]])


@pytest.mark.parametrize("case, bleu, ter", [
    (PINNED, 62.7413054884, 0.4497748447204969),  # multi-bleu-detok.perl at 10 digits: 62.7413054884
    (UPPER, 100.0, 1 / 3),  # lower-cased by LoRA's pipeline: perfect, but for eval.py's extra line
    (ZERO_4GRAM, 0.0, 0.7523809523809524),  # no 4-gram match: 0.00, no smoothing
])
def test_generationeval_bleu_ter_match_official(case, bleu, ter):
    hyps, refs = metrics.lora_files(case["hyps"], case["refs"])
    assert metrics.multi_bleu_detok(hyps, refs) == pytest.approx(bleu, abs=1e-9)
    assert metrics.generationeval_ter(hyps, refs) == pytest.approx(ter, abs=1e-12)


def test_ter_is_not_capped_at_one():
    # eval.py: 1.5 = (2.0 + 1) / 2, the output's TER 2.0 (8 deletions / 4 reference words) and the
    # empty line after the files' final newline; capping each output at 1 gave 1.0
    hyps, refs = metrics.lora_files(["The hotel is in Rome and it is very very nice."], [["Hotel in Rome."]])
    assert metrics.generationeval_ter(hyps, refs) == 1.5
    assert metrics.pyter_ter(hyps[0].split(), refs[0][0].split()) == 2.0


@pytest.mark.slow
@pytest.mark.skipif(not has_meteor, reason="METEOR 1.5 needs Java and pycocoevalcap's jar")
def test_generationeval_meteor_matches_official_with_several_references():
    # PINNED has inputs with 1, 2 and 3 references (6 after LoRA's padding), an empty output, quotes;
    # eval.py's METEOR: 0.4491816470245339 (pycocoevalcap's METEOR on PTB tokens gave 0.4282)
    out = metrics.generationeval(PINNED["hyps"], PINNED["refs"])
    assert out["meteor"] == pytest.approx(0.4491816470245339, abs=1e-15)
    assert metrics.generationeval(["The hotel is in Rome and it is very very nice."], [["Hotel in Rome."]]) == \
        pytest.approx(dict(bleu=0.0, ter=1.5, meteor=0.34340395502816545), abs=1e-15)


@pytest.mark.slow
@pytest.mark.skipif(not has_meteor, reason="METEOR 1.5 needs Java and pycocoevalcap's jar")
def test_generationeval_meteor_keeps_an_empty_last_output_a_line():
    # eval.py's METEOR fails here ("\\n".join drops the empty last line: test and reference not same
    # length); with the empty output first it gives 0.7926829268292683, and a corpus METEOR does not
    # depend on the order of its lines
    out = metrics.generationeval(["Aarhus Airport serves Aarhus.", ""], [["Aarhus Airport serves Aarhus."], ["Texas."]])
    assert out["meteor"] == pytest.approx(0.7926829268292683, abs=1e-15)


def test_multi_bleu_detok_by_hand():
    # p1..p4 = 5/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5); case-sensitive, unlike mteval's
    assert metrics.multi_bleu_detok(["the cat sat on mat"], [["the cat sat on the mat"]]) == \
        pytest.approx(100 * (3 / 4 * 2 / 3 * 1 / 2) ** 0.25 * math.exp(-0.2), abs=1e-12)
    assert metrics.multi_bleu_detok(["The cat sat on the mat"], [["the cat sat on the mat"]]) == \
        pytest.approx(100 * (5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25, abs=1e-12)
    assert metrics.multi_bleu_detok([""], [["a b c d"]]) == 0.0  # the Perl script dies here (division by 0)
    # only ASCII whitespace splits, as in Perl on bytes: "a\xa0b" is one word
    assert metrics.multi_bleu_detok(["a\xa0b c d e"], [["a\xa0b c d e"]]) == pytest.approx(100.0)
    assert metrics.multi_bleu_detok(["a\xa0b c d e"], [["a b c d e"]]) < 100


def test_pyter_ter_by_hand():
    ref = "SAUDI ARABIA denied THIS WEEK information published in the AMERICAN new york times".split()
    hyp = "THIS WEEK THE SAUDIS denied information published in the new york times".split()
    assert f"{metrics.pyter_ter(hyp, ref):.3f}" == "0.308"  # pyter's own doctest
    assert metrics.pyter_ter("a b c e".split(), "a b c d".split()) == 1 / 4
    assert metrics.pyter_ter("c d a b".split(), "a b c d".split()) == 1 / 4  # one shift of a 2-word phrase
    assert metrics.pyter_ter([], "a b".split()) == 1.0
    assert metrics.pyter_ter("A b".split(), "a b".split()) == 1 / 2  # case-sensitive


E2E_COCO = dict(  # three E2E-style outputs with 2, 2 and 3 references, non-ASCII text
    hyps=["The Vaults is a pub near Café Adriatic with a price range of £20-25.",
          "Blue Spice is a coffee shop in the city centre. It is not family-friendly.",
          "The Mill, a cheap riverside restaurant, serves Italian food."],
    refs=[["The Vaults pub near Café Adriatic has a 5 star rating. Prices start at £30.",
           "Close to Café Adriatic, The Vaults pub is moderately priced."],
          ["Blue Spice is a coffee shop in the city centre that is not family friendly.",
           "In the city centre there is an adult coffee shop called Blue Spice."],
          ["The Mill is a cheap Italian restaurant by the river.", "Along the riverside, The Mill serves cheap Italian food.",
           "The Mill is an Italian place near the river; it is cheap."]])


@pytest.mark.slow
@pytest.mark.skipif(not has_meteor, reason="METEOR 1.5 and the PTB tokenizer need Java")
def test_e2e_coco_scores_match_official_script():
    # tuetschek/e2e-metrics measure_scores.run_coco_eval (its own pycocoevalcap copy) on these lines;
    # run_mteval: BLEU 0.3746, NIST 4.2562
    out = metrics.nlg_metrics("e2e", E2E_COCO["hyps"], E2E_COCO["refs"])
    assert out["meteor"] == pytest.approx(0.4214468004706325, abs=1e-15)
    assert out["rouge_l"] == pytest.approx(0.6303905081844329, abs=1e-15)
    assert out["cider"] == pytest.approx(2.958989173593949, abs=1e-12)
    assert round(out["bleu"] / 100, 4) == 0.3746 and round(out["nist"], 4) == 4.2562


def test_e2e_without_java_reports_no_official_rouge_or_cider(monkeypatch):
    # without the PTB tokenizer ROUGE-L and CIDEr run on mteval tokens: 0.6322 and 2.7664 here against
    # the official 0.6304 and 2.9590 above, so they must not be named rouge_l and cider
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    out = metrics.nlg_metrics("e2e", E2E_COCO["hyps"], E2E_COCO["refs"])
    assert not {"meteor", "rouge_l", "cider"} & set(out)
    assert out["rouge_l_approx"] == pytest.approx(0.6321979941401848, abs=1e-12)
    assert out["cider_approx"] == pytest.approx(2.766409008611928, abs=1e-12)
    assert "Java" in out["meteor_missing"] and "rouge_l_approx" in out["rouge_l_missing"] and "cider_approx" in out["cider_missing"]


def test_coco_scores_without_pycocoevalcap_name_what_is_missing_instead_of_failing(monkeypatch):
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    out = metrics.nlg_metrics("e2e", ["the cat sat on the mat"], [["the cat sat on the mat"]])
    assert out["bleu"] == pytest.approx(100.0) and not {"meteor", "rouge_l", "cider"} & set(out)
    assert all("pycocoevalcap" in out[f"{k}_missing"] for k in ("meteor", "rouge_l", "cider"))


def test_nlg_metrics_keys(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)  # keep this test Java-free and fast
    hyps, refs = ["the cat sat on the mat", "a dog"], [["the cat sat on the mat"], ["a dog barks"]]
    e2e = metrics.nlg_metrics("e2e", hyps, refs)
    assert {"bleu", "nist", "rouge_l_approx", "cider_approx", "meteor_missing"} <= set(e2e)
    web = metrics.nlg_metrics("webnlg", hyps, refs, seen=[True, False])
    assert {"bleu", "ter", "meteor_missing", "seen", "unseen"} <= set(web) and "meteor" not in web
    # eval.py's extra empty line (TER 1) is part of every (sub)set's mean
    assert web["seen"]["bleu"] == pytest.approx(100.0) and web["seen"]["ter"] == pytest.approx(1 / 2)
    assert web["unseen"]["ter"] == pytest.approx((1 / 3 + 1) / 2)
