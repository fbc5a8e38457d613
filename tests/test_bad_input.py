"""Bad input gets a clear error before any time is spent: every loader names the file (and line) and says what to do;
`open-chatgpt pipeline` checks every stage's settings, model and data source before the first stage and writes nothing."""
import time

import pytest

from open_chatgpt.data import load_preferences, load_prompts, load_sft
from open_chatgpt.pipeline import main

BAD = {  # name -> (bytes, what the message must say)
    "notjson.jsonl": (b'{"prompt": "a", "chosen": " b", "rejected": " c"}\nthis is not json\n', "line 2"),
    "cut.json": (b'[{"prompt": "a", "chosen": " b", "rejected": " c"}, {"prompt": ', "truncated"),
    "empty.jsonl": (b"", "empty"),
    "noise.jsonl": (bytes(range(256)) * 4, "not UTF-8"),
    "corrupt.jsonl.gz": (b"\x1f\x8b\x08\x00\x00\x00\x00\x00garbage", "gzip"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    for name, (data, _) in BAD.items(): (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("load", [load_preferences, load_sft, load_prompts])
def test_loaders_name_the_file_and_the_problem(bad_files, name, load):
    with pytest.raises(ValueError) as e:
        load(str(bad_files / name))
    msg = str(e.value)
    assert name in msg and BAD[name][1] in msg, msg


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_preferences(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_preferences(str(tmp_path / "data.parquet"))


def _fails_fast(capsys, out, args, *needles):
    t0 = time.perf_counter()
    rc = main(["pipeline", "-o", str(out), "--quick", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    for n in needles: assert n in err, err
    assert not out.exists(), f"{out} was created: {sorted(p.name for p in out.iterdir())}"   # nothing half-written
    assert time.perf_counter() - t0 < 60                                                      # no stage ran
    return err


def test_pipeline_rejects_a_missing_model_before_anything(capsys, tmp_path):
    _fails_fast(capsys, tmp_path / "run", ["--model", "/no/such/dir"], "/no/such/dir", "no such directory")
    _fails_fast(capsys, tmp_path / "run", ["--reward-model", "./nowhere"], "./nowhere")


@pytest.mark.parametrize("setting", ["ppo.learning_rate=-1", "sft.learning_rate=0", "reward.learning_rate=-0.1",
                                     "ppo.gamma=1.5", "ppo.total_steps=0"])
def test_pipeline_rejects_bad_settings_before_sft(capsys, tmp_path, setting):
    _fails_fast(capsys, tmp_path / "run", ["--set", setting], setting.split("=")[0].split(".")[1])


@pytest.mark.parametrize("flag", ["--data", "--sft-data", "--prompts"])
def test_pipeline_rejects_bad_data_before_sft(capsys, bad_files, tmp_path, flag):
    _fails_fast(capsys, tmp_path / "run", [flag, str(bad_files / "notjson.jsonl")], "notjson.jsonl, line 2")
