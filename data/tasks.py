"""
Fine-tuning tasks as (context, completion) examples, formatted the way the LoRA / Prefix-Tuning
NLG pipeline does (microsoft/LoRA examples/NLG/src/format_converting_*.py and gpt2_encode):

  E2E      `MR||text` lines: context = MR, completion = text
  WebNLG   triples linearized `subject : property : object | ...`, one example per "good"
           lexicalisation, with the seen/unseen category flag
  DART     the same linearization with lower-cased relations, one example per annotation
  curation / summarization   context = article, completion = summary (scored by perplexity)

Tokens: context + <|endoftext|>, then " " + completion + <|endoftext|> (GPT-2 has a single special
token, used as both separator and end of text). Test sets are grouped by input, each with all of
its references, for multi-reference scoring.

Files come from the local mirror ($SPDF_DATA_MIRROR) when there is one, else from the public URLs.
"""
import csv
import json
import os
import random
import sys
from pathlib import Path

from common import check
from data.sources import EOT, fetch, mirror_file

TASKS = ("e2e", "webnlg", "dart", "curation", "summarization")
NLG_TASKS = ("e2e", "webnlg", "dart")
CACHE = Path(__file__).resolve().parent  # downloads go to data/<task>/raw/ (git-ignored)

LORA = "https://raw.githubusercontent.com/microsoft/LoRA/main/examples/NLG/data"
DART = "https://raw.githubusercontent.com/Yale-LILY/dart/master/data/v1.1.1"
SOURCES = {  # task -> split -> (public url, path inside the mirror)
    "e2e": {s: (f"{LORA}/e2e/{f}", f"e2e/{f}") for s, f in
            (("train", "train.txt"), ("val", "valid.txt"), ("test", "test.txt"))},
    "webnlg": {s: (f"{LORA}/webnlg_challenge_2017/{f}", f"webnlg/{f}") for s, f in
               (("train", "train.json"), ("val", "dev.json"), ("test", "test.json"))},
    "dart": {s: (f"{DART}/dart-v1.1.1-full-{f}.json", f"dart/dart-v1.1.1-full-{f}.json") for s, f in
             (("train", "train"), ("val", "dev"), ("test", "test"))},
}
WEBNLG_SEEN = {"Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument",
               "SportsTeam", "University", "WrittenWork"}


def linearize(triples, lower_relations=False):
    """[(s, p, o), ...] -> 's : p : o | s : p : o' (LoRA's format_converting_webnlg/dart)."""
    return " | ".join(f"{s} : {p.lower() if lower_relations else p} : {o}" for s, p, o in triples)


# -----------------------------------------------------------------------------
# readers: each returns a list of groups dict(context, refs=[...], seen=bool|None)


def read_e2e(path):
    """LoRA's e2e/*.txt: `MR||text ` per line; consecutive identical MRs form one group
    (as tuetschek/e2e-metrics groups its reference file)."""
    groups = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            check("||" in line, f"{path}: expected 'MR||text' lines, got {line[:60]!r}")
            mr, text = line.strip().split("||", 1)
            if groups and groups[-1]["context"] == mr:
                groups[-1]["refs"].append(text.strip())
            else:
                groups.append(dict(context=mr, refs=[text.strip()], seen=None))
    return groups


def read_webnlg(path):
    """LoRA's webnlg_challenge_2017/*.json: modified triples, "good" lexicalisations only."""
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)["entries"]
    groups = []
    for i, entry in enumerate(entries):
        e = entry[str(i + 1)]
        triples = [(t["subject"], t["property"], t["object"]) for t in e["modifiedtripleset"]]
        refs = [lex["lex"] for lex in e["lexicalisations"] if lex["comment"] == "good"]
        if refs:
            groups.append(dict(context=linearize(triples), refs=refs, seen=e["category"] in WEBNLG_SEEN))
    return groups


def read_dart(path):
    """Yale-LILY/dart JSON: a list of {tripleset, annotations}; relations lower-cased. An annotation
    without text (one in the test set: an empty <lex/> in the official XML) is not a reference."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    groups = [dict(context=linearize(d["tripleset"], lower_relations=True),
                   refs=[a["text"] for a in d["annotations"] if (a.get("text") or "").strip()], seen=None) for d in data]
    return [g for g in groups if g["refs"]]


def read_summaries(path):
    """Curation Corpus CSV (the public scraper's output) or JSON lines, each with an article
    (`article` or `article_content`) and a `summary`; empty pairs are dropped (paper: 39,911 left)."""
    path = Path(path)
    check(path.is_file(), f"summarization data not found: {path}")
    try:
        rows = _read_rows(path)
    except UnicodeDecodeError as e:
        check(False, f"{path} is not UTF-8 text ({e.reason} at byte {e.start})")
    check(rows, f"{path} holds no records")
    key = "article" if "article" in rows[0] else "article_content"
    check(key in rows[0] and "summary" in rows[0],
          f"{path}: records need 'article' (or 'article_content') and 'summary' fields")
    for n, r in enumerate(rows, 1):
        check(all(isinstance(r.get(k), (str, type(None))) for k in (key, "summary")),
              f"{path}: record {n}: '{key}' and 'summary' must be strings")
    return [dict(context=" ".join(r[key].split()), refs=[" ".join(r["summary"].split())], seen=None)
            for r in rows if r.get(key) and r.get("summary") and r[key].strip() and r["summary"].strip()]


def _read_rows(path):
    if path.suffix == ".csv":
        csv.field_size_limit(sys.maxsize)
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    check(False, f"{path}:{n} is not valid JSON")
                check(isinstance(rows[-1], dict), f"{path}:{n} is not a JSON object")
    return rows


def source_file(task, split):
    """The local path of a task split: the mirror's copy, else downloaded once."""
    url, rel = SOURCES[task][split]
    if task == "dart" and split == "test" and mirror_file(rel) is None:
        # the mirror holds the test set converted from the official XML under another name
        alt = mirror_file("dart/dart-v1.1.1-full-test.from-xml.json")
        if alt is not None:
            return alt
    return fetch(url, rel, CACHE / task / "raw")


def load_groups(task, split, data=None, seed=0):
    """The groups of one split. Returns (groups, note): note says when a stand-in split is used."""
    check(task in TASKS, f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    if task in ("curation", "summarization"):
        # no official split is distributed: 80/10/10 of a fixed shuffle (Marfurt & Henderson 2021)
        check(bool(data), f"--task={task} needs --data=<file> (Curation Corpus CSV or JSON lines)")
        groups = read_summaries(data)
        random.Random(seed).shuffle(groups)
        n = len(groups)
        a, b = round(0.8 * n), round(0.9 * n)
        return {"train": groups[:a], "val": groups[a:b], "test": groups[b:]}[split], None
    reader = {"e2e": read_e2e, "webnlg": read_webnlg, "dart": read_dart}[task]
    note = None
    if task == "dart" and split in ("train", "val") and _dart_train_missing():
        # offline mirror: no train split. Fine-tune on 90% of dev, early-stop on the other 10%
        dev = read_dart(source_file("dart", "val"))
        cut = round(0.9 * len(dev))
        note = ("DART train split is not available offline: fine-tuning on 90% of the dev split "
                "(early stopping on the other 10%), scoring on test")
        return (dev[:cut] if split == "train" else dev[cut:]), note
    return reader(source_file(task, split)), note


def _dart_train_missing():
    """True when a local mirror is in use and it lacks DART's train file (nothing downloaded yet)."""
    rel = SOURCES["dart"]["train"][1]
    return (os.environ.get("SPDF_DATA_MIRROR") and mirror_file(rel) is None
            and not (CACHE / "dart" / "raw" / Path(rel).name).exists())


def flatten(groups):
    """Training examples: one (context, completion) per reference."""
    return [dict(context=g["context"], completion=ref, seen=g["seen"]) for g in groups for ref in g["refs"]]


def encode_example(enc, context, completion, block_size):
    """Token ids and loss mask: context + EOT, ' ' + completion + EOT, cut to block_size + 1
    tokens (inputs are ids[:-1], targets ids[1:]). The loss mask marks completion targets.
    A context too long to leave room is cut from the left (keeps its end, next to the completion)."""
    ctx = enc.encode(context, disallowed_special=()) + [EOT]
    comp = enc.encode(" " + completion, disallowed_special=()) + [EOT]
    limit = block_size + 1
    if len(ctx) + len(comp) > limit:
        comp = comp[:max(limit - len(ctx), limit // 2)]
        ctx = ctx[-(limit - len(comp)):]
    ids = ctx + comp
    mask = [False] * (len(ctx) - 1) + [True] * len(comp)  # aligned with targets ids[1:]
    return ids, mask


def encode_prompt(enc, context, block_size, min_new_tokens=1):
    """Prompt for decoding: context + EOT, cut from the left to leave room for generation."""
    ids = enc.encode(context, disallowed_special=()) + [EOT]
    return ids[-(block_size - min_new_tokens):]


def load_examples(task, data, seed, enc, block_size, max_examples=0, val_examples=0):
    """(train, val, note): a task's training and validation examples encoded for a context of block_size
    tokens; max_examples > 0 keeps a random subset of train (by seed), val_examples > 0 a fixed one of
    val (the same for every run of a grid)."""
    train_groups, note = load_groups(task, "train", data, seed)
    val_groups, _ = load_groups(task, "val", data, seed)
    train, val = flatten(train_groups), flatten(val_groups)
    if max_examples:
        train = random.Random(seed).sample(train, min(max_examples, len(train)))
    if val_examples:
        val = random.Random(0).sample(val, min(val_examples, len(val)))
    check(train and val, f"{task}: empty train or validation split")
    encode = lambda examples: [encode_example(enc, e["context"], e["completion"], block_size) for e in examples]
    return encode(train), encode(val), note
