"""What a user's data becomes is what they wrote: gold answers without loss, one rule for every file format, text kept
as text, and no silent cuts."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from experiments.errors import DataUnavailable
from experiments.evaluation.extraction import IGNORED_IN_MATCH, extract_number, number_matches
from experiments.families.causal import check_truncation
from experiments.tasks import decoder as decoder_tasks
from experiments.tasks.classification import load_task
from experiments.tasks.decoder.custom import RowProblem, _number, custom_choice
from tests.helpers import compose


def _decoder_task(name: str, files: dict[str, str], **settings) -> dict:
    cfg = compose(f"task=custom/{name}", "model=tiny-llama")
    return {**dict(cfg.task), "data_files": files, **settings}


def _lmeval_equal(prediction: str, target: str) -> bool:
    """lm-eval's exact match with the suite's regexes_to_ignore: strings equal once those are removed."""
    import re

    def clean(text: str) -> str:
        for pattern in IGNORED_IN_MATCH:
            text = re.sub(pattern, "", text)
        return text

    return clean(prediction) == clean(target)


@pytest.mark.parametrize(
    ("written", "target"),
    [
        ("3.14159265358979", "3.14159265358979"),  # was 3.14159 (6 significant digits)
        (3.14159265358979, "3.14159265358979"),
        (2**60 + 1, str(2**60 + 1)),  # was rounded through a float
        (str(2**60 + 1), str(2**60 + 1)),
        ("1,234,567", "1234567"),
        ("$1,234.50", "1234.50"),
        (1e20, "100000000000000000000"),
        (1e-05, "0.00001"),
        ("-7", "-7"),
    ],
)
def test_math_gold_answers_are_read_without_loss(written, target):
    assert _number(written, "answer") == target
    model_says = f"The answer is {target}"
    assert number_matches(extract_number(model_says), target)  # LLM-Adapters' rule, exactly
    assert _lmeval_equal(target, target)
    if isinstance(written, int) and written > 2**53:
        assert not number_matches(extract_number(str(written + 1)), target)  # a float would call these equal


@pytest.mark.parametrize("ambiguous", ["3,5", "1,23", "12,34.5"])
def test_a_comma_that_does_not_group_thousands_is_refused(ambiguous):
    with pytest.raises(RowProblem, match="comma that does not group thousands"):
        _number(ambiguous, "answer")


def test_custom_math_from_csv_and_jsonl_gives_the_same_targets(tmp_path):
    answers = ["0.1", "12345678901234567891", "2.50", "1,000"]
    rows = [{"question": f"q{i}?", "answer": a} for i, a in enumerate(answers)]
    csv = tmp_path / "m.csv"
    csv.write_text("question,answer\n" + "".join(f'{r["question"]},"{r["answer"]}"\n' for r in rows))
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    targets = []
    for path in (csv, jsonl):
        data = decoder_tasks.load_decoder_task(_decoder_task("math", {"train": str(path), "test": str(path)}))
        targets.append([item["target"] for item in data.evaluation["custom_math"]])
    assert targets[0] == targets[1] == ["0.1", "12345678901234567891", "2.50", "1000"]


def _choice_files(tmp_path: Path, answer) -> tuple[Path, Path]:
    row = {"question": "Which is one?", "choices": ["2", "4", "1", "3"], "answer": answer}
    csv = tmp_path / "c.csv"
    csv.write_text('question,choices,answer\n"Which is one?","[""2"", ""4"", ""1"", ""3""]",' + f"{answer}\n")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps(row) + "\n" + json.dumps({**row, "question": "Again?"}) + "\n")
    return csv, jsonl


def test_one_choice_rule_for_every_format(tmp_path):
    """Choices ["2", "4", "1", "3"] and answer 1: an index (choice "4") or a text (choice "1")? Refused in every
    format unless task.answer_format says; then both formats give the same gold."""
    csv, jsonl = _choice_files(tmp_path, 1)
    for path in (csv, jsonl):
        with pytest.raises(DataUnavailable, match="is ambiguous: as index it is choice 2 .*as text it is choice 3"):
            decoder_tasks.load_decoder_task(_decoder_task("choice", {"train": str(path), "test": str(path)}))
    for answer_format, gold in (("index", "4"), ("text", "1")):
        golds = set()
        for path in (csv, jsonl):
            task = _decoder_task("choice", {"train": str(path), "test": str(path)}, answer_format=answer_format)
            item = decoder_tasks.load_decoder_task(task).evaluation["custom_choice"][0]
            golds.add(["2", "4", "1", "3"][item["label"]])
        assert golds == {gold}
    unambiguous = custom_choice({"question": "q", "choices": ["red", "blue"], "answer": "1"})
    assert unambiguous["label"] == 1  # an index no text contradicts


def test_csv_text_stays_as_written_and_padded_labels_are_one_class(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n00017,pos\nTRUE,neg\n0.50,pos\nfine,neg\nok, pos\nbad,neg \n")
    task = dict(compose("task=custom/classification").task) | {"data_files": {"train": str(path)}}
    data = load_task(task | {"validation_share": 0.2})
    texts = {e["text_a"] for e in [*data.train, *data.validation]}
    assert {"00017", "TRUE", "0.50"} <= texts
    assert data.label_map == {"neg": 0, "pos": 1}
    assert any("2 label(s) had spaces around them" in w for w in data.warnings)


def test_digit_labels_are_class_indices_in_every_format(tmp_path):
    rows = [{"text": f"t{i}", "label": str(i % 2)} for i in range(6)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    base = dict(compose("task=custom/classification").task) | {"validation_share": 0.5}
    read = [load_task(base | {"data_files": {"train": str(p)}}) for p in (jsonl, csv)]
    assert [e["label"] for e in read[0].train] == [e["label"] for e in read[1].train]
    assert read[0].label_map is None and read[0].num_labels == 2


def test_a_nested_parquet_column_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "n.parquet"
    table = pa.table({"text": [{"inner": "a"}, {"inner": "b"}], "label": [0, 1]})
    pq.write_table(table, path)
    task = dict(compose("task=custom/classification").task) | {"data_files": {"train": str(path)}}
    with pytest.raises(DataUnavailable, match="has an object, not text, in 'text'"):
        load_task(task | {"validation_share": 0.5})


def test_cuts_are_counted_and_a_vanishing_prompt_is_refused():
    def feature(prompt: int, target: int, max_length: int) -> dict:
        room = max_length - min(target, max_length)
        kept = min(prompt, room)
        return {"prompt_cut": prompt - kept, "prompt_kept": kept, "target_cut": max(0, target - max_length)}

    counted = check_truncation([feature(10, 3, 8), feature(4, 3, 8)], 8)
    assert counted["cut"] == 1 and counted["examples"] == 2
    with pytest.raises(DataUnavailable, match="would lose its whole prompt"):
        check_truncation([feature(10, 8, 8)], 8)


def test_decimal_extraction_is_exact():
    assert extract_number("so 12345678901234567891.") == Decimal("12345678901234567891")


def test_preview_prints_what_the_model_sees_and_a_summary(tmp_path, capsys):
    from experiments.preview import main as preview_main

    path = tmp_path / "m.csv"
    path.write_text('question,answer\n"How many in 1,234 boxes of 1?","1,234"\nPi to 14 places?,3.14159265358979\n')
    files = f"task.data_files={{train: {path}, test: {path}}}"
    assert preview_main(["model=tiny-llama", "task=custom/math", files, "--n", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [json.loads(line) for line in lines if line.startswith("{")]
    assert [s["split"] for s in shown] == ["train", "eval/custom_math"]
    assert shown[1]["target"] == "1234" and "1,234 boxes" in shown[1]["input"]
    assert lines[-2] == "# train: 2 examples; 0 cut to 256 tokens (prompts lose their start)"
    assert preview_main(["model=tiny-llama", "task=custom/math", files, "train.max_length=8"]) == 2
    assert "train.max_length=8 is too short for training example" in capsys.readouterr().err
    assert preview_main(["model=tiny", "task=custom/classification", "task.data_files={train: /no/such.csv}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a generation item's gold is its reference texts (preview once failed on them with a KeyError)
    chat = tmp_path / "chat.jsonl"
    rows = [{"prompt": "Q: hi\nA:", "response": ["hello", "hey"]}, {"prompt": "Q: bye\nA:", "response": "ciao"}]
    chat.write_text("".join(json.dumps(row) + "\n" for row in rows))
    files = f"task.data_files={{train: {chat}, test: {chat}}}"
    assert preview_main(["model=tiny-llama", "task=custom/generation", files, "--n", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [json.loads(line) for line in lines if line.startswith("{")]
    assert shown[1]["target"] == ["hello", "hey"] and "text': 2" in lines[-1]
