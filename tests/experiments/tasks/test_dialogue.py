"""Generation tasks (TeRA's Table 3): ConvAI2 turns in HiRA's instruction and prompt (its files' schema and the hub's),
the offline dialogue stand-in, your own prompt -> text files, how a generation is cut, and the text metrics they are
scored by, named apart from the answer-scoring protocols."""

import json
from pathlib import Path

import pytest
import yaml

import experiments.evaluation.generation as generation
from experiments.errors import DataUnavailable
from experiments.families.causal import MAIN_KEYS, evaluate_all, flatten
from experiments.tasks import decoder as tasks
from experiments.tasks.decoder import dialogue

CONF = Path(__file__).resolve().parents[3] / "conf"
HUB_ROW = {
    "personality": ["i like to ski .", "i have two dogs ."],
    "history": ["hi , how are you ?", "great , just back from skiing .", "nice ! where did you go ?"],
    "candidates": ["i like cats .", "we went to the alps with my dogs ."],
}


def test_a_convai2_turn_is_hiras_instruction_in_hiras_prompt():
    item = dialogue.convai2(HUB_ROW)
    assert item["prompt"] == (
        "CONTEXT: Given the dialog history between Q and R is:\n"
        "Q: hi , how are you ?\nR: great , just back from skiing .\nQ: nice ! where did you go ?\n\n"
        "Given the personality of the R as: \ni like to ski .\ni have two dogs .\n\n"
        "Please response to Q according to both the dialog history and the R's personality.\n"
        "Now, the R would say: TARGET: "
    )
    assert item["references"] == ["we went to the alps with my dogs ."] and item["solution"] == item["references"][0]
    # HiRA's own files hold the instruction already built
    built = dialogue.convai2({"instruction": "Given the dialog history ...", "output": "sure ."})
    assert built["prompt"] == "CONTEXT: Given the dialog history ... TARGET: " and built["references"] == ["sure ."]
    with pytest.raises(ValueError, match="'candidates' is empty"):
        dialogue.convai2({**HUB_ROW, "candidates": []})


def test_generations_are_cut_as_hira_cuts_them():
    assert dialogue.cut_generation("\n\n i went skiing . Q: and you ?") == "i went skiing ."
    assert dialogue.cut_generation("fine thanks\nTARGET: more") == "fine thanks"
    assert dialogue.cut_generation("R: hello") == ""


def test_the_offline_stand_in_splits_by_prompt_and_keeps_every_answer():
    config = yaml.safe_load((CONF / "task" / "dialogue" / "offline.yaml").read_text())
    try:
        data = tasks.load_decoder_task(config)
    except DataUnavailable as err:  # chatterbot-corpus is part of make setup
        pytest.skip(str(err))
    tested = data.evaluation["chatterbot"]
    assert len(tested) == dialogue.CHATTERBOT_HELD_OUT and data.kinds == {"chatterbot": "generation"}
    assert not {e["prompt"] for e in data.train} & {i["prompt"] for i in tested}  # no tested prompt is trained on
    assert max(len(i["references"]) for i in tested) > 1  # several answers to one prompt: several references
    assert all("personality" not in i["prompt"].split("Please response")[0] for i in tested)  # no persona part
    assert tasks.fingerprint(config)["eval/chatterbot"].startswith("offline stand-in (held-out part) of chatterbot")
    # Carved validation turns are generation items too: Table 3's smoke once scored them (and then its test) as math
    carved = tasks.load_decoder_task({**config, "validation_size": 40})
    assert carved.kinds == {"chatterbot": "generation"} and len(carved.validation["chatterbot"]) == 40
    assert all(item["references"] for item in carved.validation["chatterbot"])


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_your_own_prompt_to_text_data(tmp_path):
    config = yaml.safe_load((CONF / "task" / "custom" / "generation.yaml").read_text())
    rows = [{"prompt": f"Translate {i} to French:", "response": ["un", "une"] if i == 1 else "deux"} for i in range(6)]
    files = {"train": _write(tmp_path / "train.jsonl", rows[:4]), "test": _write(tmp_path / "test.jsonl", rows[4:])}
    data = tasks.load_decoder_task({**config, "data_files": files})
    assert data.kinds == {"custom_generation": "generation"}
    assert data.train[1] == {"prompt": "Translate 1 to French:", "target": "un"}  # as given, the first reference
    assert [i["references"] for i in data.evaluation["custom_generation"]] == [["deux"], ["deux"]]
    renamed = [{"q": "Say hi", "a": '["hi", "hello"]'}, {"q": "Say bye", "a": "bye"}, {"q": "Say yes", "a": "yes"}]
    path = _write(tmp_path / "renamed.jsonl", renamed)
    data = tasks.load_decoder_task(
        {**config, "data_files": {"train": path}, "prompt_field": "q", "response_field": "a"}
    )
    assert sum(len(v) for v in data.evaluation.values()) == 1 and data.test_is_validation
    blank = _write(tmp_path / "blank.jsonl", [{"prompt": " ", "response": "x"}])
    with pytest.raises(DataUnavailable, match=r"blank.jsonl line 1 does not fit: its 'prompt' is blank"):
        tasks.load_decoder_task({**config, "data_files": {"train": blank, "test": blank}})


def test_generation_tasks_are_scored_by_text_metrics_under_any_protocol(monkeypatch):
    items = [
        {"id": "d-0", "prompt": "CONTEXT: hi TARGET: ", "references": ["the cat sat on the mat"]},
        {"id": "d-1", "prompt": "CONTEXT: yo TARGET: ", "references": ["i like to ski", "skiing is fun"]},
    ]
    written = ["the cat sat on the mat\nQ: more", "R: nothing"]  # one perfect response, one cut to nothing
    monkeypatch.setattr(generation, "generate", lambda *a, **k: written)
    data = tasks.DecoderData(train=[], evaluation={"d": items}, kinds={"d": "generation"}, provenance={})
    config = type("Eval", (), {"protocol": "lm-eval", "batch_size": 2, "max_new_tokens": 8, "limit": None})()
    metrics, samples = evaluate_all(None, None, data, config, Path("."))
    row = metrics["d"]
    assert set(row) == {f"text_{k}" for k in generation.TEXT_METRICS} | {"text_empty", "n", "settings"}
    assert row["text_empty"] == 0.5  # the second response was cut to nothing
    assert row["text_rouge_l"] == pytest.approx(0.5) and 0 < row["text_bleu"] < 1  # (1 + 0) / 2 items
    assert row["settings"]["bleu"] and "bertscore" in row["settings"]
    assert [s["response"] for s in samples["d"]] == ["the cat sat on the mat", ""]
    flat = flatten(metrics)
    assert "test_d_text_average" in flat and not any("settings" in key for key in flat)
    assert MAIN_KEYS[("llm-adapters", "generation")] == MAIN_KEYS[("lm-eval", "generation")] == "text_average"
