"""
Pre-training corpora as nanoGPT-format token files: data/<name>/train.bin and val.bin, uint16
GPT-2 tokens, each document followed by <|endoftext|>. Everything streams: documents are read,
tokenized and appended in batches, so no corpus ever has to fit in memory.

  python data/prepare.py shakespeare                  # tinyshakespeare, the default (338k tokens)
  python data/prepare.py enwiki                       # WikiExtractor text (*.txt or *.txt.xz)
  python data/prepare.py wikinews                     # Wikinews JSON lines
  python data/prepare.py pile --files=a.jsonl.zst,... # Pile-style JSON lines with a "text" field
  python data/prepare.py pile --files=00.jsonl.zst,01.jsonl.zst --workers=16   # one process per shard

Sources come from $SPDF_DATA_MIRROR when it holds them, else from the public address, or from
--files. Documents go to val.bin one in `val_every` (deterministic, so re-runs agree).
"""
import io
import json
import lzma
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (UsageError, check, check_writable_dir, lock_output, parse_config, raise_write_error,
                    release_outputs, run_cli)
from data.sources import fetch, get_tokenizer, mirror_file, read_bin

DATA_DIR = Path(os.environ.get("SPDF_DATA_DIR") or Path(__file__).resolve().parent)  # data/<name>/ by default
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
PILE_URL = "https://huggingface.co/datasets/monology/pile-uncopyrighted/resolve/main/{}"


def open_text(path):
    """A text stream over a plain, .xz or .zst file."""
    path = str(path)
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8")
    if path.endswith(".zst"):
        import zstandard
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, encoding="utf-8")


def shakespeare_docs(files):
    """tinyshakespeare is one text: its first 90% trains, the last 10% validates (as nanoGPT)."""
    path = files[0] if files else fetch(SHAKESPEARE_URL, "pretrain/tinyshakespeare/input.txt",
                                        DATA_DIR / "shakespeare")
    text = Path(path).read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    yield "train", text[:cut]
    yield "val", text[cut:]


def wikiextractor_docs(files):
    """WikiExtractor output: <doc ...> title line, paragraphs, </doc>."""
    for path in files:
        with open_text(path) as f:
            lines = []
            for line in f:
                if line.startswith("<doc "):
                    lines = []
                elif line.startswith("</doc>"):
                    text = "".join(lines[1:]).strip()  # drop the title line
                    if text:
                        yield None, text
                else:
                    lines.append(line)


def jsonl_docs(files, min_chars=1):
    for path in files:
        with open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line).get("text") or ""
                except (json.JSONDecodeError, AttributeError):
                    raise UsageError(f"{path}:{n}: not a JSON object with a 'text' field")
                check(isinstance(text, str), f"{path}:{n}: the 'text' field is not a string")
                if len(text) >= min_chars:
                    yield None, text


def enwiki_files(files):
    if files:
        return files
    found = [mirror_file(f"pretrain/enwiki2015/enwiki2015_{p}.txt.xz") for p in ("AA", "AB")]
    check(all(found), "enwiki: no local copy; run WikiExtractor on a dump from dumps.wikimedia.org "
          "and pass --files=out/AA/wiki_00,... (or set SPDF_DATA_MIRROR)")
    return found


def wikinews_files(files):
    if files:
        return files
    found = mirror_file("pretrain/wikinews/wikinews_en.jsonl.xz")
    check(found is not None, "wikinews: no local copy; pass --files=wikinews.jsonl[.xz] "
          "(JSON lines with a 'text' field) or set SPDF_DATA_MIRROR")
    return [found]


def pile_files(files):
    # the uncopyrighted Pile: 30 train shards of ~15 GB compressed; the default takes shard 00
    return files or [fetch(PILE_URL.format(f"train/{s}"), f"pretrain/pile/{s}", DATA_DIR / "pile" / "raw")
                     for s in ("00.jsonl.zst",)]


# name -> documents(files) yielding (split or None, text)
DATASETS = {
    "shakespeare": shakespeare_docs,
    "enwiki": lambda files: wikiextractor_docs(enwiki_files(files)),
    "wikinews": lambda files: jsonl_docs(wikinews_files(files), min_chars=200),
    "pile": lambda files: jsonl_docs(pile_files(files)),
}


def _tokenize(name, files, val_every, out_dir, suffix, batch_docs=256):
    """Tokenize the documents of `files` into <out_dir>/{train,val}<suffix>.bin; returns token counts."""
    enc = get_tokenizer()
    eot = enc.eot_token
    outs = {s: open(out_dir / f"{s}{suffix}.bin.tmp", "wb") for s in ("train", "val")}
    counts = {"train": 0, "val": 0}
    batch = {"train": [], "val": []}

    def flush(split):
        if batch[split]:
            for tokens in enc.encode_ordinary_batch(batch[split], num_threads=os.cpu_count() or 1):
                arr = np.array(tokens + [eot], dtype=np.uint16)
                outs[split].write(arr.tobytes())  # not tofile: its errors lose the OS's reason
                counts[split] += len(arr)
            batch[split] = []

    try:
        for i, (split, text) in enumerate(DATASETS[name](list(files))):
            split = split or ("val" if i % val_every == 0 else "train")
            batch[split].append(text)
            if len(batch[split]) >= batch_docs:
                flush(split)
        for split in outs:
            flush(split)
    except UnicodeDecodeError as e:
        raise UsageError(f"{name}: an input file is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except (EOFError, lzma.LZMAError) as e:
        raise UsageError(f"{name}: an input file is truncated or not in its compression format ({e})") from e
    finally:
        for f in outs.values():
            f.close()
    return counts


def _tokenize_shard(args):
    return _tokenize(*args)


def prepare(name, files=(), val_every=100, out_dir=None, workers=1):
    """
    Tokenize dataset `name` into <out_dir>/{train,val}.bin; returns the token counts. With
    workers > 1 and several input files, each file is tokenized by its own process into its own
    shard, {train,val}_NNN.bin, which load_tokens() reads back as one sequence.
    """
    check(name in DATASETS, f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    for f in files:
        check(Path(f).is_file(), f"{name}: file not found: {f}")
    check_writable_dir(out_dir or DATA_DIR / name, "--out_dir")
    out_dir = Path(out_dir or DATA_DIR / name)
    lock_output(out_dir)  # one preparation at a time per folder
    out_dir.mkdir(parents=True, exist_ok=True)
    suffixes = [f"_{k:03d}" for k in range(len(files))] if workers > 1 and len(files) > 1 else [""]
    try:
        if len(suffixes) > 1:
            from multiprocessing import Pool
            jobs = [(name, [f], val_every, out_dir, suffix) for f, suffix in zip(files, suffixes)]
            with Pool(min(workers, len(jobs))) as pool:
                per_shard = pool.map(_tokenize_shard, jobs)
        else:
            per_shard = [_tokenize(name, files, val_every, out_dir, "")]
        counts = {s: sum(c[s] for c in per_shard) for s in ("train", "val")}
        check(counts["train"] > 0 and counts["val"] > 0, f"{name}: no documents in the train or val split")
    except BaseException as e:  # no *.bin.tmp leftovers; the earlier complete files stay
        for split in ("train", "val"):
            for suffix in suffixes:
                (out_dir / f"{split}{suffix}.bin.tmp").unlink(missing_ok=True)
        raise_write_error(e, out_dir / "train.bin", "prepared data")
        raise
    for split in ("train", "val"):  # only complete files replace earlier ones
        for old in out_dir.glob(f"{split}*.bin"):
            old.unlink()
        for suffix in suffixes:
            os.replace(out_dir / f"{split}{suffix}.bin.tmp", out_dir / f"{split}{suffix}.bin")
    print(f"{name}: {counts['train']:,} train and {counts['val']:,} val tokens in {out_dir}"
          + (f" ({len(suffixes)} shards)" if len(suffixes) > 1 else ""))
    release_outputs(out_dir)
    return counts


def _split_files(name, split, data_dir=None):
    folder = Path(data_dir or DATA_DIR / name)
    single = folder / f"{split}.bin"
    return [single] if single.exists() else sorted(folder.glob(f"{split}_[0-9][0-9][0-9].bin"))


def ensure_prepared(name, data_dir=None):
    """Prepare data/<name> on first use. A user-given data_dir is only read, never written: missing
    token files there are an error that says what is missing."""
    check(name in DATASETS, f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    if data_dir:
        check(Path(data_dir).is_dir(), f"--data_dir {data_dir} does not exist (or is not a folder)")
        missing = [f"{s}.bin" for s in ("train", "val") if not _split_files(name, s, data_dir)]
        check(not missing, f"--data_dir {data_dir} has no {' or '.join(missing)}; write them with "
              f"python data/prepare.py {name} --out_dir={data_dir} (data_dir is never written by training)")
    elif not (_split_files(name, "train") and _split_files(name, "val")):
        prepare(name)


class Shards:
    """Several memory-mapped token files read as one sequence: len() and [i:j] slices."""

    def __init__(self, paths):
        self.maps = [read_bin(p) for p in paths]
        self.starts = np.cumsum([0] + [len(m) for m in self.maps])

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, window):
        start, stop = window.start or 0, window.stop if window.stop is not None else len(self)
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < stop:  # a window may cross into the next shard
            local = start - self.starts[k]
            piece = self.maps[k][local:local + (stop - start)]
            pieces.append(piece)
            start += len(piece)
            k += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def load_tokens(name, split, data_dir=None):
    """The split as a read-only uint16 memmap (pages in only what batches touch), shards joined."""
    paths = _split_files(name, split, data_dir)
    check(paths, f"no {split} tokens for {name} in {data_dir or DATA_DIR / name}")
    return read_bin(paths[0]) if len(paths) == 1 else Shards(paths)


DEFAULTS = dict(name="",        # the dataset (DATASETS), also as the first argument
                files="",       # comma-separated input files instead of the default source
                val_every=100,  # one document in val_every goes to val.bin
                out_dir="",     # "" = data/<name>
                workers=1)      # processes, one per input file


def main(argv):
    cfg, overrides = parse_config(DEFAULTS, argv, positional=("name",))
    check(cfg["name"], f"usage: python data/prepare.py NAME [--files=a,b] [--val_every=100] [--workers=N] "
          f"(NAME: {', '.join(DATASETS)})")
    check(overrides.get("out_dir") != "", "--out_dir is empty")
    for key in ("val_every", "workers"):
        check(cfg[key] >= 1, f"--{key} must be a positive integer")
    files = [f for f in cfg["files"].split(",") if f]
    prepare(cfg["name"], files, cfg["val_every"], cfg["out_dir"] or None, cfg["workers"])


if __name__ == "__main__":
    run_cli(main)
