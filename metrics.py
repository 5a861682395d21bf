"""
Generation metrics as the tasks' official scripts compute them.

E2E (tuetschek/e2e-metrics, measure_scores.py): BLEU and NIST from its mteval-v13a-sig.pl, ported
below statement by statement (its Python twin metrics/pymteval.py differs in two places, noted);
METEOR 1.5, ROUGE-L and CIDEr from pycocoevalcap after its PTB tokenizer, the same code the
official script calls. METEOR and the PTB tokenizer need Java: without it METEOR is omitted and
ROUGE-L and CIDEr are reported as rouge_l_approx and cider_approx (another tokenizer).

WebNLG / DART (WebNLG/GenerationEval eval.py, fed as LoRA's gpt2_decode.py --tokenize --lower feeds
it, which is how the LoRA and SPDF papers score): outputs and references lower-cased and split at
every non-word character, 6 references per input; BLEU = multi-bleu-detok.perl (ported: cased
mteval-v13a tokens, no smoothing); TER = pyter (ported) on nltk.word_tokenize tokens, best
reference per output, not capped at 1, plus eval.py's extra empty line; METEOR = METEOR 1.5 run
as eval.py runs it (`-l en -norm -r 6`, pycocoevalcap's jar) on the nltk tokens. Numbers pinned in
tests/test_metrics.py; which official script each equals, and on what: results/metrics.md.

A value computed another way than the official script is never reported under the official name.
All BLEU values are on the 0-100 scale; METEOR, ROUGE-L, TER are fractions; NIST and CIDEr raw.
"""
import importlib.util
import math
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

# -----------------------------------------------------------------------------
# mteval-v13a (the E2E challenge's BLEU and NIST)


# Perl's \s on the decoded text mteval-v13a-sig.pl reads (binmode :utf8): Unicode White_Space. Python's
# \s also matches the ASCII separators U+001C-U+001F, which Perl keeps inside words.
PERL_SPACE = re.compile(r"[^\S\x1c-\x1f]+")


def mteval_tokenize(text, lower=True, space=PERL_SPACE):
    """mteval-v13a's default `tokenization` (lower-cases ASCII A-Z only, as Perl's tr/// does);
    lower=False: multi-bleu-detok.perl's (case kept); `space`: what counts as whitespace."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    text = text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    if lower:
        text = text.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"))
    text = " " + text + " "
    text = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", text)  # punctuation
    text = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", text)  # period, comma unless preceded by a digit
    text = re.sub(r"([\.,])([^0-9])", r" \1 \2", text)  # ... unless followed by a digit
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)  # dash after a digit
    return [w for w in space.split(text) if w]


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


def coco_missing(module):
    """None when pycocoevalcap's `module` (e.g. "rouge.rouge") can be imported, else why not."""
    try:
        found = importlib.util.find_spec(f"pycocoevalcap.{module}") is not None
    except ImportError:  # pycocoevalcap itself is not there
        found = False
    return None if found else "pycocoevalcap is not installed (pip install pycocoevalcap)"


COCO = {"meteor": ("meteor.meteor", "Meteor"), "rouge_l": ("rouge.rouge", "Rouge"), "cider": ("cider.cider", "Cider")}


def coco_scores(hyps, refs, which=("meteor", "rouge_l", "cider")):
    """Corpus scores from pycocoevalcap, after its PTB tokenizer as COCOEvalCap does. The PTB
    tokenizer (Stanford CoreNLP) and METEOR need Java. Without it METEOR is omitted, and ROUGE-L and
    CIDEr are computed on a lower-cased mteval tokenization instead, which is not the official
    number (+5 % and -1 % relative on one E2E output): they are reported as 'rouge_l_approx' and
    'cider_approx'. Without pycocoevalcap all three are omitted. Each official score that is not
    reported has its reason under '<name>_missing', so a run never fails at its end over a scorer
    that is not installed, and never reports another number under the official name."""
    out = {}
    res = {i: [h] for i, h in enumerate(hyps)}
    gts = {i: list(rs) for i, rs in enumerate(refs)}
    java = java_missing()
    official_tokens = java is None and coco_missing("tokenizer.ptbtokenizer") is None
    if official_tokens:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        tok = PTBTokenizer()
        gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in gts.items()})
        res = tok.tokenize({i: [{"caption": h[0]}] for i, h in res.items()})
    else:
        gts = {i: [" ".join(mteval_tokenize(r)) for r in rs] for i, rs in gts.items()}
        res = {i: [" ".join(mteval_tokenize(h[0]))] for i, h in res.items()}
    for name in which:
        module, cls = COCO[name]
        missing = (java if name == "meteor" else None) or coco_missing(module)
        if missing:
            out[f"{name}_missing"] = missing
            continue
        scorer = getattr(importlib.import_module(f"pycocoevalcap.{module}"), cls)()
        score = float(scorer.compute_score(gts, res)[0])
        if hasattr(scorer, "close"):
            scorer.close()
        if official_tokens:
            out[name] = score
        else:
            out[f"{name}_approx"] = score
            out[f"{name}_missing"] = (f"the official {name} tokenizes with Stanford's PTB tokenizer, which needs Java "
                                      f"(not found on PATH); {name}_approx is the same scorer on mteval tokens")
    return out


# -----------------------------------------------------------------------------
# WebNLG / DART: GenerationEval's eval.py (BLEU = multi-bleu-detok.perl, TER = pyter), fed as LoRA feeds it

LORA_NUM_REFS = 6  # gpt2_decode.py --ref_num 6, eval.py -nr 6 (WebNLG and DART alike)
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")  # Perl's \s on byte strings: non-ASCII spaces are not spaces


def lora_postprocess(text):
    """LoRA's gpt2_decode.py --tokenize --lower, applied to outputs and references before eval.py:
    lower-case, then every non-word character (Unicode \\W) its own token."""
    return " ".join(" ".join(re.split(r"(\W)", text.lower())).split())


def lora_files(hyps, refs, num_refs=LORA_NUM_REFS):
    """What gpt2_decode.py writes: post-processed text, exactly num_refs references per input (the
    first num_refs; missing ones filled with the first reference)."""
    return ([lora_postprocess(h) for h in hyps],
            [[lora_postprocess(rs[i] if i < len(rs) else rs[0]) for i in range(num_refs)] for rs in refs])


def multi_bleu_detok(hyps, refs, lowercase=False):
    """Corpus BLEU (0-100) as moses' multi-bleu-detok.perl computes it (GenerationEval prints it with
    2 decimals): mteval-v13a tokenization, case-sensitive, on bytes (only ASCII whitespace splits);
    closest reference length, ties to the shorter; no smoothing, so BLEU is 0 when any 1-4-gram
    precision is 0. Where the script fails (every output empty: division by zero), 0.0."""
    def tok(text):
        return mteval_tokenize(text, lower=lowercase, space=_ASCII_SPACE)  # (-lc: ASCII only, as Perl's lc)
    correct, total, hyp_len, ref_len = [0] * 5, [0] * 5, 0, 0
    for h, rs in zip(hyps, refs):
        words = tok(h)
        best, closest = Counter(), (9999, 9999)
        for r in rs:
            r = tok(r)
            closest = min(closest, (abs(len(words) - len(r)), len(r)))
            for g, c in _ngrams(r, 4).items():
                best[g] = max(best[g], c)
        hyp_len, ref_len = hyp_len + len(words), ref_len + closest[1]
        for g, c in _ngrams(words, 4).items():
            total[len(g)] += c
            correct[len(g)] += min(c, best[g])
    if ref_len == 0 or hyp_len == 0:
        return 0.0
    if 0 in correct[1:]:
        return 0.0
    bp = math.exp(1 - ref_len / hyp_len) if hyp_len < ref_len else 1.0
    return 100 * bp * math.exp(sum(math.log(correct[n] / total[n]) for n in range(1, 5)) / 4)


def nltk_word_tokenize(text):
    """nltk.word_tokenize as eval.py applies it to a line of LoRA's post-processed text. word_tokenize
    first splits sentences with Punkt's English model, but there every period is a token already and
    the split changes nothing, so the line is tokenized whole: no Punkt data and no nltk pin needed
    (nltk 3.10 here gives what nltk 3.5 + English Punkt give on all 20,644 WebNLG/DART test and dev
    references, results/metrics.md)."""
    from nltk.tokenize import NLTKWordTokenizer
    return NLTKWordTokenizer().tokenize(text)


def _levenshtein_rows(words, ref, rows, start):
    """Extend rows (rows[i] = distances of words[:i] to every prefix of ref) from row `start` on."""
    del rows[start + 1:]
    for w in words[start:]:
        prev, row = rows[-1], [rows[-1][0] + 1]
        for j, r in enumerate(ref):
            row.append(min(prev[j + 1] + 1, row[j] + 1, prev[j] + (w != r)))
        rows.append(row)
    return rows


def pyter_ter(hyp, ref):
    """TER as the pyter package computes it (GenerationEval's TER): greedily apply the phrase shift
    that lowers the word edit distance most (a shift moves hyp[i:i+L], the longest run starting at
    i that equals ref[j:j+L], i != j, to position j of the remaining words; ties go to the
    lexicographically largest result), until none lowers it; TER = (shifts + edit distance) / len(ref).
    Unlike tercom: no shift-length or distance limits, and a shift need not fix a mismatch."""
    hyp, ref = list(hyp), list(ref)
    rows = _levenshtein_rows(hyp, ref, [list(range(len(ref) + 1))], 0)
    shifts = 0
    while True:
        base, best = rows[-1][-1], None
        for i in range(len(hyp)):
            for j in range(len(ref)):
                if i == j or hyp[i] != ref[j]:
                    continue
                n = 1
                while i + n < len(hyp) and j + n < len(ref) and hyp[i + n] == ref[j + n]:
                    n += 1
                moved = hyp[:i] + hyp[i + n:]
                moved[j:j] = hyp[i:i + n]
                start = min(i, j)  # words before both positions are unchanged: reuse their rows
                dist = _levenshtein_rows(moved, ref, [list(r) for r in rows[:start + 1]], start)[-1][-1]
                if best is None or (base - dist, moved) > best[:2]:
                    best = (base - dist, moved)
        if best is None or best[0] <= 0:
            return (shifts + rows[-1][-1]) / len(ref)
        shifts, hyp = shifts + 1, best[1]
        rows = _levenshtein_rows(hyp, ref, [rows[0]], 0)


def generationeval_ter(hyps, refs):
    """eval.py's ter_score on LoRA's files: per output the lowest pyter TER against its references
    (an empty reference counts 1), on nltk-tokenized text, averaged. Not capped: an output longer than
    its references scores above 1. eval.py splits its files on '\\n', so the final newline that
    gpt2_decode.py writes adds one empty output with empty references, scoring 1; it is counted here."""
    scores = []
    for h, rs in zip(hyps, refs):
        h = " ".join(nltk_word_tokenize(h)).split()
        candidates = []
        for r in rs:
            r = " ".join(nltk_word_tokenize(r))
            candidates.append(pyter_ter(h, r.split()) if r else 1.0)
        scores.append(min(candidates))
    scores.append(1.0)  # the empty line after the final newline
    return sum(scores) / len(scores)


def meteor_jar():
    """pycocoevalcap's METEOR 1.5 jar (data/paraphrase-en.gz beside it, as in METEOR's own release),
    or None when pycocoevalcap is not installed."""
    if coco_missing("meteor.meteor"):
        return None
    return str(Path(importlib.util.find_spec("pycocoevalcap.meteor").submodule_search_locations[0]) / "meteor-1.5.jar")


def generationeval_meteor(hyps, refs):
    """eval.py's meteor_score on LoRA's files: METEOR 1.5 run as eval.py runs it (`-l en -norm -r N`,
    corpus score) on nltk-tokenized lines, N references per output. eval.py itself fails on those
    files (their final newline leaves it a reference file with N-1 lines too many, and METEOR stops
    with "test and reference not same length": it prints -1); this is its score on the same lines
    without that extra empty one. Each line is newline-terminated so that an empty last output
    stays a line. Needs Java; raises RuntimeError with METEOR's message when it fails."""
    n = len(refs[0])
    if any(len(rs) != n for rs in refs):
        raise ValueError(f"METEOR -r {n}: every output needs {n} references (lora_files pads them)")
    with tempfile.TemporaryDirectory() as tmp:
        hyp_file, ref_file = Path(tmp, "hypothesis_meteor"), Path(tmp, "reference_meteor")
        hyp_file.write_text("".join(" ".join(nltk_word_tokenize(h)) + "\n" for h in hyps), encoding="utf-8")
        ref_file.write_text("".join(" ".join(nltk_word_tokenize(r)) + "\n" for rs in refs for r in rs), encoding="utf-8")
        jar = meteor_jar()
        run = subprocess.run(["java", "-Xmx2G", "-jar", jar, str(hyp_file), str(ref_file), "-l", "en", "-norm", "-r", str(n)],
                             capture_output=True, text=True, encoding="utf-8", cwd=Path(jar).parent)
    found = re.search(r"^Final score:\s+(\S+)\s*$", run.stdout, re.M)
    if run.returncode or not found:
        raise RuntimeError(f"METEOR 1.5 failed: {(run.stderr.strip() or run.stdout.strip())[-300:]}")
    return float(found.group(1))


def generationeval(hyps, refs):
    """BLEU (0-100), TER (fraction) and METEOR as GenerationEval's eval.py reports them on the files
    LoRA's pipeline hands it (lora_files: lower-cased, \\W-split, 6 references), as the SPDF and LoRA
    papers score. Without Java or pycocoevalcap, METEOR is omitted and 'meteor_missing' says why."""
    hyps, refs = lora_files(hyps, refs)
    out = dict(bleu=multi_bleu_detok(hyps, refs), ter=generationeval_ter(hyps, refs))
    missing = java_missing() or coco_missing("meteor.meteor")
    if missing:
        out["meteor_missing"] = missing
    else:
        out["meteor"] = generationeval_meteor(hyps, refs)
    return out


def nlg_metrics(task, hyps, refs, seen=None):
    """The metrics dict for metrics.json. E2E: bleu, nist, meteor, rouge_l, cider.
    WebNLG/DART: bleu, meteor, ter; WebNLG also per 'seen'/'unseen' category subset."""
    assert len(hyps) == len(refs) and hyps, "need one hypothesis per reference group"
    if task == "e2e":
        bleu, nist = mteval_bleu_nist(hyps, refs)
        return dict(bleu=100 * bleu, nist=nist, **coco_scores(hyps, refs))

    out = generationeval(hyps, refs)
    if task == "webnlg" and seen is not None:
        for name, flag in (("seen", True), ("unseen", False)):
            idx = [i for i, s in enumerate(seen) if s == flag]
            out[name] = generationeval([hyps[i] for i in idx], [refs[i] for i in idx]) if idx else None
    return out
