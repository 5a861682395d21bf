"""
Generation metrics as the tasks' official scripts compute them.

E2E (tuetschek/e2e-metrics, measure_scores.py): BLEU and NIST from its mteval-v13a-sig.pl, ported
below statement by statement (its Python twin metrics/pymteval.py differs in two places, noted);
METEOR 1.5, ROUGE-L and CIDEr from pycocoevalcap after its PTB tokenizer, the same code the
official script calls. METEOR and the PTB tokenizer need Java.

WebNLG / DART (WebNLG/GenerationEval, as the LoRA pipeline runs it): BLEU = multi-bleu-detok.perl,
i.e. sacrebleu's corpus BLEU (13a tokenization, case-sensitive); METEOR = meteor-1.5 `-norm` on
tokenized text (pycocoevalcap's jar, same version and flags); TER = the mean over sentences of the
best TER against any reference (GenerationEval uses pyter; sacrebleu's tercom port here).

All BLEU values are on the 0-100 scale; METEOR, ROUGE-L, TER are fractions; NIST and CIDEr raw.
"""
import math
import re
import shutil
from collections import Counter

# -----------------------------------------------------------------------------
# mteval-v13a (the E2E challenge's BLEU and NIST)


def mteval_tokenize(text):
    """mteval-v13a's default `tokenization` (lower-cases ASCII A-Z only, as Perl's tr/// does)."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    text = text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = " " + text.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")) + " "
    text = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", text)  # punctuation
    text = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", text)  # period, comma unless preceded by a digit
    text = re.sub(r"([\.,])([^0-9])", r" \1 \2", text)  # ... unless followed by a digit
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)  # dash after a digit
    return re.sub(r"\s+", " ", text).strip().split()


def _ngrams(words, max_n):
    """Counts of all n-grams up to max_n (mteval's Words2Ngrams)."""
    return Counter(tuple(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


def mteval_bleu_nist(hyps, refs):
    """
    System-level BLEU (0-1, mteval's default smoothing) and NIST of hyps against lists of
    references, as mteval-v13a-sig.pl computes them for e2e-metrics' SGML files (one document).
    e2e-metrics pads inputs with fewer references with empty ones; the script skips those in the
    closest-length search and in the reference count, which is what happens here.
    """
    refs = [[mteval_tokenize(r) for r in rs] for rs in refs]
    hyps = [mteval_tokenize(h) for h in hyps]
    # NIST information weights from all reference n-grams: info = log2(count(prefix) / count(ngram))
    counts, total_words = Counter(), 0
    for rs in refs:
        for r in rs:
            total_words += len(r)
            counts.update(_ngrams(r, 5))
    info = {g: -math.log2(c / (counts[g[:-1]] if len(g) > 1 else total_words)) for g, c in counts.items()}

    match, tst, ref_words, tst_info = [0] * 6, [0] * 6, 0, [0.0] * 6
    ref_length, nrefs = 0, 0
    for h, rs in zip(hyps, refs):
        h_ngrams = _ngrams(h, 5)
        best = Counter()
        for r in rs:
            for g, c in _ngrams(r, 5).items():
                best[g] = max(best[g], c)
        for n in range(1, 6):
            tst[n] += max(0, len(h) - n + 1)  # (pymteval lets this go negative for short outputs)
        for g, c in h_ngrams.items():
            if g in best:
                hits = min(c, best[g])
                match[len(g)] += hits
                tst_info[len(g)] += info[g] * hits
        # closest reference length, ties to the shorter; empty (padding) references are skipped
        closest = len(rs[0])
        for r in rs[1:]:
            if r and (abs(len(h) - len(r)), len(r)) < (abs(len(h) - closest), closest):
                closest = len(r)
        ref_length += closest
        ref_words += sum(len(r) for r in rs)
        nrefs += sum(1 for r in rs if r)

    # BLEU: geometric mean of 1-4-gram precisions; a zero match count becomes 1 / (2^k * count)
    log_sum, smooth = 0.0, 1
    for n in range(1, 5):
        if tst[n] == 0:
            continue
        if match[n] == 0:
            smooth *= 2
            log_sum += math.log(1 / (smooth * tst[n]))
        else:
            log_sum += math.log(match[n] / tst[n])
    bp = math.exp(min(0.0, 1 - ref_length / tst[1])) if tst[1] > 0 else 0.0
    bleu = math.exp(log_sum / 4) * bp

    # NIST: information-weighted 1-5-gram precisions, penalized by length against the mean
    # reference length (= all reference words / mean number of references per input)
    nist = sum(tst_info[n] / max(tst[n], 1) for n in range(1, 6))
    avg_ref_len = ref_words / (nrefs / len(hyps)) if nrefs else 0.0
    ratio = tst[1] / avg_ref_len if avg_ref_len else 0.0
    beta = -math.log(0.5) / math.log(1.5) ** 2
    penalty = 1.0 if ratio >= 1 else 0.0 if ratio <= 0 else math.exp(-beta * math.log(ratio) ** 2)
    return bleu, nist * penalty


# -----------------------------------------------------------------------------
# pycocoevalcap: METEOR, ROUGE-L, CIDEr (Java for METEOR and the PTB tokenizer)


def java_missing():
    """None when a Java runtime is on PATH, else the reason METEOR cannot run."""
    return None if shutil.which("java") else "METEOR needs a Java runtime (java not found on PATH)"


def coco_scores(hyps, refs, which=("meteor", "rouge_l", "cider")):
    """Corpus scores from pycocoevalcap, after its PTB tokenizer as COCOEvalCap does. Without
    Java, METEOR is omitted (reason under 'meteor_missing') and the others run on a lower-cased
    mteval tokenization instead of PTB's."""
    out = {}
    res = {i: [h] for i, h in enumerate(hyps)}
    gts = {i: list(rs) for i, rs in enumerate(refs)}
    missing = java_missing()
    if missing is None:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        tok = PTBTokenizer()
        gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in gts.items()})
        res = tok.tokenize({i: [{"caption": h[0]}] for i, h in res.items()})
    else:
        gts = {i: [" ".join(mteval_tokenize(r)) for r in rs] for i, rs in gts.items()}
        res = {i: [" ".join(mteval_tokenize(h[0]))] for i, h in res.items()}
    if "meteor" in which:
        if missing:
            out["meteor_missing"] = missing
        else:
            from pycocoevalcap.meteor.meteor import Meteor
            scorer = Meteor()
            out["meteor"] = float(scorer.compute_score(gts, res)[0])
            scorer.close() if hasattr(scorer, "close") else None
    if "rouge_l" in which:
        from pycocoevalcap.rouge.rouge import Rouge
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in which:
        from pycocoevalcap.cider.cider import Cider
        out["cider"] = float(Cider().compute_score(gts, res)[0])
    return out


# -----------------------------------------------------------------------------
# sacrebleu: multi-bleu-detok BLEU and TER


def sacre_bleu(hyps, refs):
    """Corpus BLEU (0-100) with variable reference counts (missing ones passed as None)."""
    import sacrebleu
    k = max(len(rs) for rs in refs)
    streams = [[rs[j] if j < len(rs) else None for rs in refs] for j in range(k)]
    return float(sacrebleu.corpus_bleu(hyps, streams).score)


def mean_best_ter(hyps, refs):
    """GenerationEval's TER: per sentence the lowest TER against any single reference (edits /
    that reference's length), averaged over sentences; text tokenized with 13a first."""
    from sacrebleu.metrics import TER
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    tok, ter = Tokenizer13a(), TER()
    scores = []
    for h, rs in zip(hyps, refs):
        h = tok(h)
        scores.append(min(ter.sentence_score(h, [tok(r)]).score / 100 if r.strip() else 1.0 for r in rs))
    return sum(scores) / len(scores)


def nlg_metrics(task, hyps, refs, seen=None):
    """The metrics dict for metrics.json. E2E: bleu, nist, meteor, rouge_l, cider.
    WebNLG/DART: bleu, meteor, ter; WebNLG also per 'seen'/'unseen' category subset."""
    assert len(hyps) == len(refs) and hyps, "need one hypothesis per reference group"
    if task == "e2e":
        bleu, nist = mteval_bleu_nist(hyps, refs)
        return dict(bleu=100 * bleu, nist=nist, **coco_scores(hyps, refs))

    def score(h, r):
        return dict(bleu=sacre_bleu(h, r), **coco_scores(h, r, which=("meteor",)), ter=mean_best_ter(h, r))

    out = score(hyps, refs)
    if task == "webnlg" and seen is not None:
        for name, flag in (("seen", True), ("unseen", False)):
            idx = [i for i, s in enumerate(seen) if s == flag]
            out[name] = score([hyps[i] for i in idx], [refs[i] for i in idx]) if idx else None
    return out
