"""Data chapter: bad input, loaders on local files in every supported format, the embedded sample."""
import csv
import gzip
import json
import os
import re
import subprocess
import sys
import warnings

import pytest

from open_chatgpt.data import (EOS, PairwiseCollator, PromptCollator, SFTCollator, get_tokenizer, load_preferences,
                               load_prompts, load_records, load_sft, parse_hh, prompt_split, sample_pairs, sample_prompts,
                               train_tokenizer, truncate_left)

GOOD = {"chosen": "\n\nHuman: Is tea healthy?\n\nAssistant: In moderation, yes.",
        "rejected": "\n\nHuman: Is tea healthy?\n\nAssistant: No idea."}


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def write_jsonl(path, records, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records: f.write(json.dumps(r) + "\n")
    return path


# ---------------------------------------------------------------- malformed preference records
@pytest.mark.parametrize("rec, msg", [
    ({"chosen": GOOD["chosen"]}, "missing field(s) ['rejected']"),
    ({"rejected": GOOD["rejected"]}, "missing field(s) ['chosen']"),
    ({"chosen": None, "rejected": GOOD["rejected"]}, "'chosen' must be a string, got NoneType"),
    ({"chosen": ["a"], "rejected": GOOD["rejected"]}, "'chosen' must be a string, got list"),
    ({"chosen": "   ", "rejected": GOOD["rejected"]}, "'chosen' is empty"),
    ({"chosen": "\n\nHuman: hi", "rejected": GOOD["rejected"]}, "no '\\n\\nAssistant:' turn"),
    ({"chosen": "\n\nHuman: Is tea healthy?\n\nAssistant:  ", "rejected": GOOD["rejected"]}, "'chosen response' is empty"),
    ({"chosen": GOOD["chosen"], "rejected": "\n\nHuman: Other?\n\nAssistant: x"}, "do not share a prompt"),
    ("not a dict", "expected a dict record"),
])
def test_parse_hh_errors_name_the_problem(rec, msg):
    with pytest.raises(ValueError) as e:
        parse_hh(rec, "row 12")
    assert msg in str(e.value) and "row 12" in str(e.value)


def test_malformed_record_in_a_file_is_named_with_its_index(tmp_path):
    p = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD, {"chosen": GOOD["chosen"], "rejected": ""}])
    with pytest.raises(ValueError, match=r"prefs.jsonl, record 2: field 'rejected' is empty"):
        load_preferences(str(p))


def test_skip_mode_counts_and_reports(tmp_path):
    p = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, {"chosen": GOOD["chosen"], "rejected": ""}, GOOD,
                                               {"chosen": "no turns", "rejected": "at all"}])
    with pytest.warns(UserWarning, match="skipped 2 of 4 records"):
        ds = load_preferences(str(p), "all", on_error="skip")
    assert len(ds) == 2 and "2 records kept, 2 skipped" in ds.info.description


def test_all_bad_records_is_an_error_not_an_empty_dataset(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "x", "rejected": "y"}])
    with pytest.raises(ValueError, match="no usable records"):
        load_preferences(str(p), on_error="skip")


# ---------------------------------------------------------------- local formats
@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "csv"])
def test_local_formats(tmp_path, fmt):
    recs = [GOOD, {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"}]
    p = tmp_path / f"prefs.{fmt}"
    if fmt == "jsonl": write_jsonl(p, recs)
    elif fmt == "jsonl.gz": write_jsonl(p, recs, gz=True)
    elif fmt == "json": p.write_text(json.dumps(recs))
    else:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, ["chosen", "rejected"]); w.writeheader(); w.writerows(recs)
    ds = load_preferences(str(p), "all")                 # one file: split="all" is every record
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert ds[1] == {"prompt": "\n\nHuman: 2+2?\n\nAssistant:", "chosen": " 4", "rejected": " 5"}
    assert load_sft(str(p), "all")[0] == {"prompt": "\n\nHuman: Is tea healthy?\n\nAssistant:", "response": " In moderation, yes."}
    assert list(load_prompts(str(p), "all")["prompt"]) == ["\n\nHuman: Is tea healthy?\n\nAssistant:", "\n\nHuman: 2+2?\n\nAssistant:"]


def test_one_local_file_is_split_by_prompt_not_returned_twice(tmp_path):
    "A local file has no splits of its own: train and test are disjoint by prompt (as the sample's), 'all' is everything."
    prompts = [f"\n\nHuman: question {i}?\n\nAssistant:" for i in range(40)]
    p = write_jsonl(tmp_path / "mine.jsonl", [dict(prompt=q, chosen=" yes", rejected=" no") for q in prompts for _ in (0, 1)])
    tr, te = load_preferences(str(p), "train"), load_preferences(str(p), "test")
    assert len(tr) + len(te) == 80 and len(te) > 0 and not set(tr["prompt"]) & set(te["prompt"])
    assert sorted(set(load_sft(str(p), "test")["prompt"])) == sorted(set(te["prompt"]))
    assert sorted(load_prompts(str(p), "test")["prompt"]) == sorted(set(te["prompt"]))     # distinct prompts, once each
    q = write_jsonl(tmp_path / "prompts.jsonl", [dict(prompt=x) for x in prompts for _ in (0, 1, 2)])
    assert len(load_prompts(str(q), "all")) == 40                                        # a prompt file: each prompt once
    other = "train" if prompt_split(prompts[0]) == "test" else "test"                     # the split its one prompt is not in
    with pytest.raises(ValueError, match=f"none of its 1 records falls in the '{other}' split"):
        load_preferences(str(write_jsonl(tmp_path / "one.jsonl", [dict(prompt=prompts[0], chosen=" a", rejected=" b")])), other)

def test_adapters_detected_from_fields(tmp_path):
    shp = {"history": "Best pizza topping?", "human_ref_A": "Basil.", "human_ref_B": "Pineapple.", "labels": 1}
    cmp_ = {"info": {"post": "Long post", "title": "T", "subreddit": "s"},
            "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0}
    sft = {"prompt": "POST: p\nTL;DR:", "label": "short"}
    assert load_preferences(str(write_jsonl(tmp_path / "shp.jsonl", [shp])), "all")[0]["chosen"] == " Basil."
    assert load_preferences(str(write_jsonl(tmp_path / "cmp.jsonl", [cmp_])), "all")[0]["rejected"] == " b"
    assert load_sft(str(write_jsonl(tmp_path / "tldr.jsonl", [sft])), "all")[0]["response"] == " short"


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_preferences(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.parquet2").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_preferences(str(tmp_path / "x.parquet2"))


def test_unknown_hub_name_offline_is_a_clear_error():
    # a user offline sets HF_HUB_OFFLINE before starting Python; datasets reads it at import time
    code = ("from open_chatgpt.data import load_preferences\n"
            "try: load_preferences('someone/does-not-exist')\n"
            "except ValueError as e: print('ValueError:', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"ValueError: could not load data set 'someone/does-not-exist'.*Offline\?", out), out


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be"): sample_pairs("validation")
    with pytest.raises(ValueError, match="kind must be"): load_records("sample", kind="images")


# ---------------------------------------------------------------- embedded sample
def test_sample_size_and_fixed_split():
    tr, te = sample_pairs("train"), sample_pairs("test")
    assert len(tr) + len(te) >= 2000
    assert (len(tr), len(te)) == (1611, 394)  # fixed by the prompt hash: changes only if the data changes
    assert not set(tr["prompt"]) & set(te["prompt"])
    assert all(prompt_split(p) == "test" for p in te["prompt"])
    assert 300 <= len(sample_prompts("train")) and len(sample_prompts("test")) >= 100
    assert not set(sample_prompts("train")["prompt"]) & set(sample_prompts("test")["prompt"])


# ---------------------------------------------------------------- tokenizer and collators
def test_tokenizer_shipped_equals_retrained(tok):
    texts = [t for r in sample_pairs("train") for t in (r["prompt"], r["chosen"], r["rejected"])]
    assert train_tokenizer(texts).get_vocab() == tok.get_vocab()
    assert tok.pad_token_id != tok.eos_token_id


def test_truncation_keeps_response_end(tok):
    long_prompt = "\n\nHuman: " + "blah " * 300 + "\n\nAssistant:"
    rec = {"prompt": long_prompt, "response": " The end.", "chosen": " The end.", "rejected": " Nope."}
    b = SFTCollator(tok, max_length=32)([rec])
    assert b["input_ids"].shape == (1, 32)
    assert tok.decode(b["input_ids"][0]).endswith("Assistant: The end." + EOS)
    assert tok.decode(b["labels"][0][b["labels"][0] >= 0]) == " The end." + EOS
    p = PairwiseCollator(tok, max_length=16)([rec])
    assert tok.decode(p["input_ids"][1][p["attention_mask"][1].bool()]).endswith(" Nope." + EOS)
    assert truncate_left([1, 2], [3, 4, 5, 6], 3) == ([], [4, 5, 6])
    with pytest.raises(ValueError, match="max_length must be >= 1"): truncate_left([1], [2], 0)


def test_prompt_collator_left_pads_and_checks_room(tok):
    b = PromptCollator(tok, max_prompt_length=16)([{"prompt": "\n\nHuman: hi\n\nAssistant:"}, {"prompt": "a " * 50}])
    assert b["input_ids"].shape[1] == 16 and b["attention_mask"][:, -1].tolist() == [1, 1]
    assert b["attention_mask"][0, 0].item() == 0  # the short prompt is padded on the left
    with pytest.raises(ValueError, match="exceeds the model's context"):
        PromptCollator(tok, max_prompt_length=100, max_new_tokens=50, context_length=128)
    with pytest.raises(ValueError, match="'prompt' is empty"):
        PromptCollator(tok)([{"prompt": "  "}])
