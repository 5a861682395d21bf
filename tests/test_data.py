import json
import lzma

import numpy as np
import pytest
import zstandard

from common import UsageError
from data.sources import get_tokenizer
from data.prepare import load_tokens, prepare

DOCS = [f"Document number {i} says hello to the world." for i in range(10)]


def decode_docs(path):
    enc = get_tokenizer()
    tokens = np.fromfile(path, dtype=np.uint16).tolist()
    assert tokens and tokens[-1] == enc.eot_token  # every document ends with <|endoftext|>
    return enc.decode(tokens).split("<|endoftext|>")[:-1]


def test_pile_style_zst_shards_stream_into_uint16_bins(tmp_path):
    shard = tmp_path / "00.jsonl.zst"
    lines = "".join(json.dumps({"text": d, "meta": {}}) + "\n" for d in DOCS)
    shard.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    counts = prepare("pile", files=[str(shard)], val_every=5, out_dir=tmp_path / "out")
    train, val = decode_docs(tmp_path / "out" / "train.bin"), decode_docs(tmp_path / "out" / "val.bin")
    assert val == [DOCS[0], DOCS[5]]  # every 5th document validates
    assert train == [d for i, d in enumerate(DOCS) if i % 5]
    assert counts["train"] == len(np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16))
    assert load_tokens("pile", "val", tmp_path / "out").dtype == np.uint16


def test_wikiextractor_xz_drops_markup_and_titles(tmp_path):
    src = tmp_path / "wiki_00.xz"
    text = "".join(f'<doc id="{i}" url="u" title="T{i}">\nT{i}\n\n{d}\n</doc>\n' for i, d in enumerate(DOCS))
    with lzma.open(src, "wt") as f:
        f.write(text)
    prepare("enwiki", files=[str(src)], val_every=3, out_dir=tmp_path / "out")
    val = decode_docs(tmp_path / "out" / "val.bin")
    assert val == [DOCS[0], DOCS[3], DOCS[6], DOCS[9]]


def test_wikinews_keeps_articles_of_200_chars(tmp_path):
    src = tmp_path / "news.jsonl"
    long = "x " * 150
    src.write_text("\n".join(json.dumps({"text": t}) for t in ["short", long, "", long + "y"]) + "\n")
    prepare("wikinews", files=[str(src)], val_every=2, out_dir=tmp_path / "out")
    assert decode_docs(tmp_path / "out" / "val.bin") == [long]
    assert decode_docs(tmp_path / "out" / "train.bin") == [long + "y"]


def test_shakespeare_splits_90_10(shakespeare_dir):
    train, val = load_tokens("shakespeare", "train", shakespeare_dir), load_tokens("shakespeare", "val", shakespeare_dir)
    assert 0.85 < len(train) / (len(train) + len(val)) < 0.95


def test_bad_inputs_raise_usage_errors_and_keep_old_bins(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset"):
        prepare("nope")
    with pytest.raises(UsageError, match="file not found"):
        prepare("pile", files=[str(tmp_path / "missing.jsonl")])
    out = tmp_path / "out"
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    prepare("pile", files=[str(good)], val_every=2, out_dir=out)
    before = (out / "train.bin").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(UsageError, match="bad.jsonl:2"):
        prepare("pile", files=[str(bad)], out_dir=out)
    assert (out / "train.bin").read_bytes() == before  # a failed run never replaces good files


@pytest.mark.slow
def test_several_shards_tokenize_in_parallel_and_read_back_as_one_sequence(tmp_path):
    files = []
    for k in range(3):
        f = tmp_path / f"{k:02d}.jsonl"
        f.write_text("".join(json.dumps({"text": f"shard {k} {d}"}) + "\n" for d in DOCS))
        files.append(str(f))
    sharded = prepare("pile", files=files, val_every=4, out_dir=tmp_path / "sharded", workers=3)
    single = prepare("pile", files=files[:1], val_every=4, out_dir=tmp_path / "single")
    assert sorted(p.name for p in (tmp_path / "sharded").glob("train*.bin")) == \
        ["train_000.bin", "train_001.bin", "train_002.bin"]
    joined = load_tokens("pile", "train", tmp_path / "sharded")
    first = np.fromfile(tmp_path / "single" / "train.bin", dtype=np.uint16)
    assert len(joined) == sharded["train"] and np.array_equal(joined[0:len(first)], first)
    window = joined[len(first) - 3:len(first) + 5]  # crosses from shard 0 into shard 1
    expect = np.concatenate([first, np.fromfile(tmp_path / "sharded" / "train_001.bin", dtype=np.uint16)])
    assert np.array_equal(window, expect[len(first) - 3:len(first) + 5])
    assert single["train"] == len(first)
