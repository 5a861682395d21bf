"""Task formatting (known input -> exact context/completion), multi-reference grouping, encoding."""
import json

import pytest

from common import UsageError
from data.sources import get_tokenizer, mirror_file
from data.tasks import (EOT, encode_example, encode_prompt, flatten, linearize, load_groups, read_dart,
                        read_e2e, read_summaries, read_webnlg)

needs_mirror = pytest.mark.skipif(mirror_file("e2e/test.txt") is None, reason="needs the data mirror")


def test_e2e_format_and_consecutive_grouping(tmp_path):
    p = tmp_path / "test.txt"
    p.write_text("name : The Vaults | Type : pub||The Vaults is a pub . \n"
                 "name : The Vaults | Type : pub||A pub , The Vaults . \n"
                 "name : Aromi | area : riverside||Aromi is by the river . \n"
                 "name : The Vaults | Type : pub||Again . \n", encoding="utf-8")
    groups = read_e2e(p)
    assert [g["context"] for g in groups] == ["name : The Vaults | Type : pub", "name : Aromi | area : riverside",
                                              "name : The Vaults | Type : pub"]
    assert groups[0]["refs"] == ["The Vaults is a pub .", "A pub , The Vaults ."]
    ex = flatten(groups)
    assert ex[0] == dict(context="name : The Vaults | Type : pub", completion="The Vaults is a pub .", seen=None)
    assert len(ex) == 4


def test_webnlg_good_lexicalisations_and_seen_flag(tmp_path):
    entry = lambda cat, lexs: {"category": cat, "lexicalisations": lexs, "modifiedtripleset": [
        {"subject": "Aarhus_Airport", "property": "cityServed", "object": "\"Aarhus, Denmark\""},
        {"subject": "Aarhus_Airport", "property": "elevationAboveTheSeaLevel_(in_metres)", "object": "25.0"}]}
    data = {"entries": [
        {"1": entry("Airport", [{"comment": "good", "lex": "Aarhus airport serves Aarhus."},
                                {"comment": "bad", "lex": "nope"},
                                {"comment": "good", "lex": "It is 25 m high."}])},
        {"2": entry("Artist", [{"comment": "good", "lex": "Unseen one."}])},
        {"3": entry("Airport", [{"comment": "toFix", "lex": "dropped"}])}]}
    p = tmp_path / "test.json"
    p.write_text(json.dumps(data))
    groups = read_webnlg(p)
    assert len(groups) == 2  # the entry without a good lexicalisation has nothing to score against
    assert groups[0]["context"] == ('Aarhus_Airport : cityServed : "Aarhus, Denmark" | '
                                    'Aarhus_Airport : elevationAboveTheSeaLevel_(in_metres) : 25.0')
    assert groups[0]["refs"] == ["Aarhus airport serves Aarhus.", "It is 25 m high."]
    assert groups[0]["seen"] is True and groups[1]["seen"] is False


def test_dart_lowercases_relations_and_drops_annotations_without_text(tmp_path):
    p = tmp_path / "dart.json"
    p.write_text(json.dumps([{"tripleset": [["Mars Hill College", "JOINED", "1973"], ["[TABLECONTEXT]", "[TITLE]", "X"]],
                              "annotations": [{"source": "s", "text": "Joined in 1973."}, {"source": "s", "text": "B."},
                                              {"source": "s", "text": None}, {"source": "s", "text": " "}]},
                             {"tripleset": [["a", "B", "c"]], "annotations": [{"source": "s", "text": None}]}]))
    groups = read_dart(p)
    assert groups[0]["context"] == "Mars Hill College : joined : 1973 | [TABLECONTEXT] : [title] : X"
    assert groups[0]["refs"] == ["Joined in 1973.", "B."] and len(groups) == 1  # no text, no reference
    assert linearize([("a", "B", "c")]) == "a : B : c"


def test_encoding_matches_lora_pipeline():
    enc = get_tokenizer()
    ids, mask = encode_example(enc, "name : Aromi", "Aromi is nice .", block_size=64)
    ctx, comp = enc.encode("name : Aromi") + [EOT], enc.encode(" Aromi is nice .") + [EOT]
    assert ids == ctx + comp
    assert len(mask) == len(ids) - 1  # aligned with the targets ids[1:]
    assert mask == [False] * (len(ctx) - 1) + [True] * len(comp)
    assert encode_prompt(enc, "name : Aromi", 64) == ctx
    # too long: cut to block_size + 1 tokens, the context from the left, completion kept
    long_ids, long_mask = encode_example(enc, "word " * 100, "short .", block_size=32)
    assert len(long_ids) == 33 and long_ids[-len(comp[:1]):] == [EOT]
    assert long_ids[-len(enc.encode(" short .")) - 1:] == enc.encode(" short .") + [EOT]
    assert sum(long_mask) == len(enc.encode(" short .")) + 1


def test_summarization_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "curation.csv"
    rows = ["url,article_content,summary"] + [f'u{i},"Article {i}, with  spaces.",Summary {i}.' for i in range(20)]
    rows.append('u20,,empty article dropped')
    csv_path.write_text("\n".join(rows) + "\n")
    groups = read_summaries(csv_path)
    assert len(groups) == 20 and groups[3] == dict(context="Article 3, with spaces.", refs=["Summary 3."], seen=None)
    train, _ = load_groups("curation", "train", str(csv_path))
    val, _ = load_groups("curation", "val", str(csv_path))
    test, _ = load_groups("curation", "test", str(csv_path))
    assert (len(train), len(val), len(test)) == (16, 2, 2)
    assert not {g["context"] for g in train} & {g["context"] for g in test}
    jl = tmp_path / "s.jsonl"
    jl.write_text("\n".join(json.dumps({"article": f"A {i}", "summary": f"S {i}"}) for i in range(10)))
    assert len(load_groups("summarization", "train", str(jl))[0]) == 8
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(UsageError, match="article"):
        read_summaries(bad)
    with pytest.raises(UsageError, match="needs --data"):
        load_groups("curation", "train", "")


@needs_mirror
def test_mirror_counts_and_multi_reference_grouping():
    e2e, _ = load_groups("e2e", "test")
    assert len(e2e) == 630 and sum(len(g["refs"]) for g in e2e) == 4693  # as the mirror README says
    web, _ = load_groups("webnlg", "test")
    assert len(web) == 1862 and sum(g["seen"] for g in web) == 971
    assert sum(len(g["refs"]) for g in web) == 4928
    dart_test, note = load_groups("dart", "test")
    assert len(dart_test) == 5097 and sum(len(g["refs"]) for g in dart_test) == 12551 and note is None
    # the mirror README counts 12,552 annotations; one has no text


@needs_mirror
def test_dart_without_train_split_uses_dev(monkeypatch, tmp_path):
    monkeypatch.setattr("data.tasks.CACHE", tmp_path)  # nothing downloaded earlier
    train, note = load_groups("dart", "train")
    val, _ = load_groups("dart", "val")
    assert "not available offline" in note
    assert (len(train), len(val)) == (2491, 277)  # 90% / 10% of the 2,768 dev triplesets
