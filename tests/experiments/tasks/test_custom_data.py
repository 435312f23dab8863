"""Your own data: task=custom/classification (encoders), custom/choice and custom/math (decoders), the split rules
(a carved validation share, a missing test split reported and marked), string labels and the label map, and every bad
file stopping before any model loads with one sentence that names the file, the line and what was expected."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from experiments.errors import ConfigError, DataUnavailable
from experiments.families import causal as causal_family
from experiments.families import classification as classification_family
from experiments.run import pipeline
from experiments.run.schema import validate
from experiments.run.summary import summarise
from experiments.tables.render import write_table
from experiments.tasks import decoder as decoder_tasks
from experiments.tasks.classification import load_task
from experiments.tasks.files import read_local
from tests.helpers import cli, compose, last_error

TOPICS = {
    "sports": ["the match ended in a draw", "a late goal won the cup", "the team signed a striker"],
    "science": ["the cell divides in two", "a new comet was observed", "the enzyme speeds the reaction"],
    "business": ["shares fell after the report", "the bank raised its rates", "profits doubled this year"],
}


def _write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _topics_jsonl(path: Path, repeat: int = 4) -> str:
    rows = [{"text": f"{t} ({i})", "label": label} for i in range(repeat) for label, ts in TOPICS.items() for t in ts]
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _files(**files: str) -> str:
    return "task.data_files={" + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}"


def _cfg(tmp_path: Path, *overrides: str, task: str = "custom/classification", model: str = "tiny"):
    return compose(
        f"task={task}",
        f"model={model}",
        "logger=none",
        f"output_dir={tmp_path / 'runs'}",
        "train.max_steps=2",
        "train.batch_size=4",
        *overrides,
    )


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: bad data must be found before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(classification_family, "load_model", refuse)
    monkeypatch.setattr(causal_family, "load_model", refuse)


# ------------------------------------------------------------------------------ bad data: one sentence, no model

# (name, file name, content, overrides, the sentence; {p} is the file's path)
BAD_ENCODER_DATA = [
    ("empty file", "train.csv", "", [], "{p} is empty; expected a header line and rows."),
    ("header only", "train.csv", "text,label\n", [], "{p} has a header line (text, label) but no rows."),
    (
        "not UTF-8",
        "train.csv",
        b"text,label\ngood,1\ncaf\xe9,0\n",
        [],
        "{p} is not UTF-8 text: line 3 has the byte 0xe9; save the file as UTF-8.",
    ),
    (
        "ragged row",
        "train.csv",
        "text,label\nhello,1\nwell, hello,0\n",
        [],
        "{p} line 3 has 3 field(s), but the header (line 1) has 2 (text, label); quote cells that contain a comma.",
    ),
    (
        "ragged TSV row",
        "train.tsv",
        "text\tlabel\nhello\n",
        [],
        "{p} line 2 has 1 field(s), but the header (line 1) has 2 (text, label); quote cells that contain a tab.",
    ),
    (
        "missing column",
        "train.csv",
        "text,topic\nhello,1\n",
        [],
        "{p} has no column 'label' (its columns: text, topic); set task.label_field or rename the column.",
    ),
    (
        "no text column to default to",
        "train.csv",
        "review,label\nhello,1\n",
        [],
        "{p} has no column 'text' and no columns 'sentence1' and 'sentence2' (its columns: review, label); name the "
        "text column(s) with task.text_fields=[...].",
    ),
    (
        "blank text",
        "train.csv",
        'text,label\nhello,1\n"  ",0\n',
        [],
        "{p} line 3 has a blank 'text'; every row needs text in 'text'.",
    ),
    (
        "label out of range",
        "train.csv",
        "text,label\na,0\nb,1\nc,2\n",
        ["task.num_labels=2"],
        "{p} line 4: 1 train label(s) are not integers in [0, 2) (first: 2); task.num_labels is 2: fix the labels or "
        "set task.num_labels.",
    ),
    (
        "float label on a classification task",
        "train.csv",
        "text,label\na,0.5\nb,1\n",
        [],
        "{p} line 2 has the label 0.5, which is not a class (an integer from 0, or a string); for regression set "
        "task.num_labels=1.",
    ),
    (
        "negative label",
        "train.tsv",
        "text\tlabel\na\t1\nb\t-1\n",
        [],
        "{p} line 3 has the label -1; integer labels are class indices from 0 (or use strings).",
    ),
    (
        "empty label",
        "train.csv",
        "text,label\na,1\nb,\n",
        [],
        "{p} line 3 has no label (its 'label' is empty).",
    ),
    (
        "text label on a regression task",
        "train.jsonl",
        '{"text": "a", "label": 0.5}\n{"text": "b", "label": "high"}\n',
        ["task.num_labels=1"],
        "{p} line 2 has the label 'high'; task.num_labels=1 (regression) takes numbers.",
    ),
    (
        "numbers and strings mixed",
        "train.jsonl",
        '{"text": "a", "label": 1}\n\n{"text": "b", "label": "sports"}\n',
        [],
        "{p} line 3 has the label 'sports', but {p} line 1 has 1; use one kind of label, class indices from 0 or "
        "strings.",
    ),
    (
        "malformed JSONL line",
        "train.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b" "label": 0}\n',
        [],
        "{p} line 2 is not valid JSON (Expecting ',' delimiter at column 14); expected one JSON object per line.",
    ),
    (
        "a JSONL line without the label",
        "train.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b"}\n',
        [],
        "{p} line 2 has no field 'label'; every row needs text, label.",
    ),
    (
        "a JSON list item that is no object",
        "train.json",
        '[{"text": "a", "label": 1}, ["b", 0]]',
        [],
        "{p} item 2 is a JSON list, not an object; expected one object per item with the task's fields.",
    ),
    (
        "more string labels than task.num_labels",
        "train.csv",
        "text,label\na,x\nb,y\nc,z\n",
        ["task.num_labels=2"],
        "The data has 3 distinct labels (x, y, z), more than task.num_labels=2; leave task.num_labels out to take the "
        "count from the data.",
    ),
    (
        "binary f1 asked of three classes",
        "train.csv",
        "text,label\na,0\nb,1\nc,2\n",
        ["task.metrics=[accuracy,f1]"],
        "task.metrics has f1, the F1 of class 1 of a binary task, but the data has 3 classes; use macro_f1.",
    ),
]


@pytest.mark.parametrize(
    ("file_name", "content", "overrides", "sentence"),
    [case[1:] for case in BAD_ENCODER_DATA],
    ids=[case[0] for case in BAD_ENCODER_DATA],
)
def test_bad_encoder_data_is_one_sentence_before_any_model_loads(
    tmp_path, no_model, file_name, content, overrides, sentence
):
    path = _write(tmp_path / file_name, content)
    cfg = _cfg(tmp_path, _files(train=path, test=path), *overrides)
    with pytest.raises(DataUnavailable) as stop:
        pipeline.run_experiment(cfg)
    assert str(stop.value) == sentence.format(p=path)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))


def test_string_labels_on_a_task_of_class_indices(tmp_path, no_model):
    path = _write(tmp_path / "train.csv", "text,label\na,positive\nb,negative\n")
    cfg = _cfg(tmp_path, _files(train=path, validation=path, test=path), task="sentiment/tweets")
    with pytest.raises(DataUnavailable) as stop:
        pipeline.run_experiment(cfg)
    assert str(stop.value) == (
        f"{path} line 2 has the label 'positive', but task sentiment/tweets takes integer class indices in [0, 2); "
        f"convert the labels, or use task=custom/classification, which maps string labels to indices in sorted order."
    )


def test_a_file_that_is_not_parquet(tmp_path, no_model):
    path = _write(tmp_path / "train.parquet", "text,label\na,1\n")
    with pytest.raises(DataUnavailable, match=rf"^Cannot read {path} as Parquet: .+\.$"):
        pipeline.run_experiment(_cfg(tmp_path, _files(train=path)))


# (name, overrides, the sentence) for mistakes the schema finds before anything is read
BAD_FILE_SETTINGS = [
    (
        "no data files",
        ["task=custom/classification"],
        "task custom/classification reads your own files: set task.data_files={train: ..., validation: ..., test: "
        "...} (validation and test optional).",
    ),
    (
        "missing file",
        ["task=custom/classification", "task.data_files={train: /no/such/train.csv}"],
        "task.data_files.train points at '/no/such/train.csv', which does not exist.",
    ),
    (
        "a decoder key that is not read",
        ["model=tiny-llama", "task=custom/choice", "task.data_files={train: TRAIN, dev: TRAIN}"],
        "task.data_files has key(s) ['dev'] that this task does not read; it reads ['train', 'validation', 'test'].",
    ),
    (
        "no validation and no share to carve",
        ["task=glue/rte", "task.data_files={train: TRAIN}"],
        "task.data_files must name ['validation'], or carve one from train with ++task.validation_share=0.1.",
    ),
    (
        "a custom source mixed with another",
        ["model=tiny-llama", "task=custom/choice", "task.evaluate_on=[boolq]", "task.data_files={train: TRAIN}"],
        "custom_choice reads one's own train, validation and test files: use it alone, as "
        "task.train_on=[custom_choice] and task.evaluate_on=[custom_choice].",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "sentence"), [case[1:] for case in BAD_FILE_SETTINGS], ids=[case[0] for case in BAD_FILE_SETTINGS]
)
def test_file_settings_are_checked_with_the_config(tmp_path, overrides, sentence):
    train = _write(tmp_path / "train.jsonl", "{}\n")
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny"]
    with pytest.raises(ConfigError) as stop:
        validate(compose(*model, *[o.replace("TRAIN", train) for o in overrides]))
    assert str(stop.value) == sentence


# (name, task, file name, content, the sentence; {p} is the file's path)
BAD_DECODER_DATA = [
    (
        "answer that is no choice",
        "custom/choice",
        "items.jsonl",
        '{"question": "Sky?", "choices": ["blue", "green"], "answer": "red"}\n',
        "{p} line 1 does not fit: its 'answer' 'red' is none of its choices, an index from 0 to 1 or a letter A-B",
    ),
    (
        "answer index out of range",
        "custom/choice",
        "items.jsonl",
        '{"question": "Sky?", "choices": ["blue", "green"], "answer": 0}\n'
        '{"question": "Sky?", "choices": ["blue", "green"], "answer": 2}\n',
        "{p} line 2 does not fit: its 'answer' 2 is not an index of its 2 choices (0 to 1)",
    ),
    (
        "choices in a CSV cell that are no list",
        "custom/choice",
        "items.csv",
        "question,choices,answer\nSky?,blue|green,0\n",
        '{p} line 2 does not fit: its \'choices\' is not a list (in a CSV or TSV cell, write a JSON list: ["a", "b"])',
    ),
    (
        "one choice",
        "custom/choice",
        "items.jsonl",
        '{"question": "Sky?", "choices": ["blue"], "answer": 0}\n',
        "{p} line 1 does not fit: its 'choices' is ['blue'], not a list of at least two choices",
    ),
    (
        "blank question",
        "custom/choice",
        "items.jsonl",
        '{"question": " ", "choices": ["blue", "green"], "answer": 0}\n',
        "{p} line 1 does not fit: its 'question' is blank",
    ),
    (
        "renamed field",
        "custom/choice",
        "items.jsonl",
        '{"question": "Sky?", "options": ["blue", "green"], "answer": 0}\n',
        "{p} line 1 has no field 'choices'",
    ),
    (
        "math answer that is no number",
        "custom/math",
        "problems.jsonl",
        '{"question": "2+2?", "answer": "four"}\n',
        "{p} line 1 does not fit: its 'answer' is 'four', not a number",
    ),
    (
        "ARC answerKey not among the choice labels (hub schema)",
        "commonsense/arc_e",
        "arc.jsonl",
        '{"question": "Gas?", "choices": {"text": ["ice", "steam"], "label": ["A", "B"]}, "answerKey": "Z"}\n',
        "{p} line 1 does not fit: its answerKey 'Z' is not one of its choices.label ['A', 'B']",
    ),
    (
        "BoolQ answer that is not true or false (hub schema)",
        "commonsense/boolq",
        "boolq.jsonl",
        '{"question": "is ice cold", "answer": "yes"}\n',
        "{p} line 1 does not fit: its 'answer' is 'yes', not true or false",
    ),
    (
        "PIQA with a renamed column (hub schema)",
        "commonsense/piqa",
        "piqa.csv",
        "goal,solution1,solution2,label\nOpen a jar,Twist,Freeze,0\n",
        "{p} line 2 has no field 'sol1'",
    ),
    (
        "GSM8K answer without its final number (hub schema)",
        "math/gsm8k",
        "gsm8k.jsonl",
        '{"question": "Half of 18?", "answer": "18 / 2 = 9"}\n',
        "{p} line 1 does not fit: its 'answer' has no final '#### <number>'",
    ),
]


@pytest.mark.parametrize(
    ("task", "file_name", "content", "sentence"),
    [case[1:] for case in BAD_DECODER_DATA],
    ids=[case[0] for case in BAD_DECODER_DATA],
)
def test_bad_decoder_data_is_one_sentence_before_any_model_loads(
    tmp_path, no_model, task, file_name, content, sentence
):
    path = _write(tmp_path / file_name, content)
    cfg = _cfg(tmp_path, _files(train=path, test=path), task=task, model="tiny-llama")
    with pytest.raises(DataUnavailable) as stop:
        pipeline.run_experiment(cfg)
    name = validate(cfg).task.train_on[0]
    schema = decoder_tasks.SOURCES[name].schema
    assert str(stop.value) == f"{sentence.format(p=path)}; {name} rows need {schema}."


@pytest.mark.slow
def test_run_py_exits_2_with_the_sentence_and_no_traceback(tmp_path):
    path = _write(tmp_path / "train.csv", "text,label\nhello,1\nwell, hello,0\n")
    proc = cli("task=custom/classification", "model=tiny", "logger=none", f"output_dir={tmp_path}", _files(train=path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error(proc) == (
        f"error: {path} line 3 has 3 field(s), but the header (line 1) has 2 (text, label); quote cells that contain "
        f"a comma."
    )


# ------------------------------------------------------------------------------------------ readers


def test_csv_cells_stay_text_as_written_and_rows_know_their_lines(tmp_path):
    path = _write(
        tmp_path / "a.csv", 'text,label,score,flag\n"two\nlines",1,0.5,true\n\nplain,2,,False\n"x, y",3,2,TRUE\n'
    )
    rows = read_local(path)
    assert rows == [
        {"text": "two\nlines", "label": "1", "score": "0.5", "flag": "true"},
        {"text": "plain", "label": "2", "score": None, "flag": "False"},
        {"text": "x, y", "label": "3", "score": "2", "flag": "TRUE"},
    ]
    assert [rows.where(i) for i in range(3)] == [f"{path} line 2", f"{path} line 5", f"{path} line 6"]
    bom = _write(tmp_path / "bom.csv", b"\xef\xbb\xbftext,label\na,1\n")  # Excel's UTF-8 CSV
    assert read_local(bom) == [{"text": "a", "label": "1"}]


def test_json_lists_json_lines_under_a_json_name_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    listed = _write(tmp_path / "a.json", json.dumps([{"text": "a", "label": 0}, {"text": "b", "label": 1}]))
    assert read_local(listed).where(1) == f"{listed} item 2"
    lines = _write(tmp_path / "b.json", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    assert read_local(lines) == read_local(listed) and read_local(lines).where(1) == f"{lines} line 2"
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a", "label": 0}, {"text": "b", "label": 1}]), parquet)
    assert read_local(parquet) == read_local(listed) and read_local(parquet).where(0) == f"{parquet} row 1"


# ------------------------------------------------------------------------------ custom/classification


def _task(files: dict[str, str], **settings) -> dict:
    """The custom/classification task config as a plain mapping (what load_task reads)."""
    cfg = compose("task=custom/classification", "model=tiny")
    return {**dict(cfg.task), "data_files": files, **settings}


def test_string_labels_become_a_sorted_label_map_and_the_class_count_comes_from_the_data(tmp_path):
    train = _topics_jsonl(tmp_path / "train.jsonl")
    data = load_task(_task({"train": train, "test": train}))
    assert data.label_map == {"business": 0, "science": 1, "sports": 2} and data.num_labels == 3
    assert data.metrics == ["accuracy", "macro_f1"] and data.main_metric == "accuracy"
    first = json.loads(Path(train).read_text().splitlines()[0])
    assert first["label"] == "sports" and data.train[0]["label"] == 2


def test_integer_labels_count_from_zero_and_binary_data_gets_matthews(tmp_path):
    five = _write(tmp_path / "five.csv", "text,label\n" + "".join(f"t {i},{i % 5}\n" for i in range(20)))
    data = load_task(_task({"train": five}))
    assert data.num_labels == 5 and data.label_map is None and data.metrics == ["accuracy", "macro_f1"]
    two = _write(tmp_path / "two.csv", "text,label\n" + "".join(f"t {i},{i % 2}\n" for i in range(20)))
    assert load_task(_task({"train": two})).metrics == ["accuracy", "macro_f1", "matthews"]
    assert load_task(_task({"train": five}, num_labels=7)).num_labels == 7  # given: kept (classes 5, 6 unseen)


def test_regression_with_float_labels(tmp_path):
    path = _write(
        tmp_path / "scores.csv", "sentence1,sentence2,label\n" + "".join(f"a {i},b {i},{i / 4}\n" for i in range(12))
    )
    data = load_task(_task({"train": path}, num_labels=1))
    assert data.num_labels == 1 and data.metrics == ["pearson", "spearman"] and data.main_metric == "pearson"
    assert data.train[0]["text_b"] is not None and all(isinstance(e["label"], float) for e in data.train)


def test_a_validation_share_is_carved_from_train_by_a_fixed_seed(tmp_path):
    path = _write(tmp_path / "train.csv", "text,label\n" + "".join(f"text {i},{i % 3}\n" for i in range(40)))
    data = load_task(_task({"train": path}), seed=0)
    held = [e["text_a"] for e in data.validation]
    assert len(held) == 4 and len(data.train) == 36  # round(0.1 x 40)
    assert not set(held) & {e["text_a"] for e in data.train}
    assert sorted([*held, *(e["text_a"] for e in data.train)]) == sorted(f"text {i}" for i in range(40))
    assert [e["text_a"] for e in data.train] == sorted((e["text_a"] for e in data.train), key=lambda t: int(t[5:]))
    again = load_task(_task({"train": path}), seed=7)  # the run's seed does not move the split: task.split_seed does
    assert [e["text_a"] for e in again.validation] == held
    assert [e["text_a"] for e in load_task(_task({"train": path}, split_seed=1)).validation] != held
    assert len(load_task(_task({"train": path}, validation_share=0.25)).validation) == 10
    assert data.validation_carved == {"share": 0.1, "seed": 0, "rows": 4, "of": 40}
    assert data.notes == [
        "validation: 4 of the 40 train rows, carved with task.validation_share=0.1 and task.split_seed=0 (no "
        "validation split was given); train keeps the other 36"
    ]
    # no test file: the validation split is the test figure, marked
    assert data.test is data.validation and data.test_is_validation
    assert data.test_is_validation_reason == "no test split was given"


def test_a_given_validation_file_is_not_carved_and_a_given_test_file_is_the_test(tmp_path):
    train = _topics_jsonl(tmp_path / "train.jsonl")
    dev = _topics_jsonl(tmp_path / "dev.jsonl", repeat=1)
    test = _topics_jsonl(tmp_path / "test.jsonl", repeat=2)
    data = load_task(_task({"train": train, "validation": dev, "test": test}))
    assert (len(data.train), len(data.validation), len(data.test)) == (36, 9, 18)
    assert not data.test_is_validation and data.validation_carved is None and data.notes == []


def test_an_encoder_run_on_ones_own_topics_records_the_splits_and_the_label_map(tmp_path):
    train = _topics_jsonl(tmp_path / "train.jsonl", repeat=10)  # 90 rows
    record, path = pipeline.run_experiment(_cfg(tmp_path, _files(train=train)))
    assert record["complete"] and record["label_map"] == {"business": 0, "science": 1, "sports": 2}
    assert record["num_labels"] == 3 and record["metrics"] == ["accuracy", "macro_f1"]
    assert record["data_sizes"] == {"train": 81, "validation": 9, "test": 9}
    assert record["validation_carved"] == {"share": 0.1, "seed": 0, "rows": 9, "of": 90}
    assert record["test_is_validation"] and record["test_is_validation_reason"] == "no test split was given"
    assert set(record["final_metrics"]) == {
        "validation_accuracy",
        "validation_macro_f1",
        "test_accuracy",
        "test_macro_f1",
    }
    assert record["final_metrics"]["test_accuracy"] == record["final_metrics"]["validation_accuracy"]
    summary = summarise(record, path)
    assert "(the validation split: no test split was given)" in summary
    assert "data         validation: 9 of the 90 train rows, carved with task.validation_share=0.1" in summary
    # tables: the main metric the run used, and the mark that the test figure is the validation split's
    rows = write_table(tmp_path / "runs", tmp_path / "table", "Topics")
    assert len(rows) == 1 and "test_accuracy" in rows[0]
    markdown = (tmp_path / "table.md").read_text()
    assert "Test figures that are the validation split's: custom/classification (no test split was given)." in markdown


def test_the_data_read_is_in_the_run_id(tmp_path):
    train = _topics_jsonl(tmp_path / "train.jsonl")
    cfg = _cfg(tmp_path, _files(train=train))
    before = pipeline.plan_run(cfg)
    assert list(before.data) == ["train"] and before.data["train"].startswith("sha256:")
    Path(train).write_text(Path(train).read_text().replace("draw", "win"))
    assert pipeline.plan_run(cfg).run_id != before.run_id


# ------------------------------------------------------------------------------------------ custom/choice, math


CHOICES = [
    {"question": "What colour is the sky?", "choices": ["blue", "green", "red"], "answer": 0},
    {"question": "What do cows drink?", "choices": ["milk", "water"], "answer": "water"},
    {"question": "Which is a fruit?", "context": "At the market.", "choices": ["bolt", "nail", "pear"], "answer": "C"},
    {"question": "Pick the even number.", "choices": ["3", "4"], "answer": "4"},
]


def _decoder_task(name: str, files: dict[str, str], **settings) -> dict:
    cfg = compose(f"task=custom/{name}", "model=tiny-llama")
    return {**dict(cfg.task), "data_files": files, **settings}


def test_choice_items_take_an_index_the_choice_text_or_a_letter(tmp_path):
    path = _write(tmp_path / "items.jsonl", "".join(json.dumps(r) + "\n" for r in CHOICES))
    data = decoder_tasks.load_decoder_task(_decoder_task("choice", {"train": path, "test": path}))
    items = data.evaluation["custom_choice"]
    assert [i["label"] for i in items] == [0, 1, 2, 1] and data.kinds == {"custom_choice": "choice"}
    assert items[2]["answers"] == ["answer1", "answer2", "answer3"]
    assert "question: At the market. Which is a fruit?\n\nAnswer1: bolt" in items[2]["prompt"]
    assert data.train[1]["target"] == "the correct answer is answer2"
    # CSV: the choices as a JSON list in one cell; field names of one's own
    csv_path = _write(tmp_path / "items.csv", 'q,options,gold\nSky?,"[""blue"", ""green""]",1\n')
    renamed = _decoder_task("choice", {"train": csv_path}, question_field="q", choices_field="options")
    renamed["answer_field"] = "gold"
    items = decoder_tasks.convert_rows(
        decoder_tasks.SOURCES["custom_choice"],
        read_local(csv_path),
        csv_path,
        lambda row: decoder_tasks.custom_choice(row, decoder_tasks.custom_fields(renamed)),
    )
    assert items[0]["label"] == 1 and "Answer2: green" in items[0]["prompt"]


def test_decoder_split_rules(tmp_path):
    rows = [dict(CHOICES[0], question=f"Question {i}?") for i in range(20)]
    path = _write(tmp_path / "items.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    test = _write(tmp_path / "test.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:3]))
    dev = _write(tmp_path / "dev.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:5]))

    carved = decoder_tasks.load_decoder_task(_decoder_task("choice", {"train": path}))
    assert len(carved.train) == 18 and len(carved.evaluation["custom_choice"]) == 2
    assert carved.test_is_validation and carved.test_is_validation_reason == "no test file was given"
    assert carved.validation_carved == {"share": 0.1, "seed": 0, "rows": 2, "of": 20} and carved.validation == {}
    assert carved.notes[0].startswith("validation: 2 of the 20 train rows, carved with task.validation_share=0.1")
    again = decoder_tasks.load_decoder_task(_decoder_task("choice", {"train": path}))
    assert again.evaluation == carved.evaluation  # a fixed seed
    held = {i["prompt"] for i in carved.evaluation["custom_choice"]}
    assert not held & {e["prompt"] for e in carved.train}

    only_test = decoder_tasks.load_decoder_task(_decoder_task("choice", {"train": path, "test": test}))
    assert len(only_test.train) == 20 and len(only_test.evaluation["custom_choice"]) == 3  # no carving
    assert not only_test.test_is_validation and only_test.validation == {}

    only_dev = decoder_tasks.load_decoder_task(_decoder_task("choice", {"train": path, "validation": dev}))
    assert len(only_dev.evaluation["custom_choice"]) == 5 and only_dev.test_is_validation

    both = decoder_tasks.load_decoder_task(_decoder_task("choice", {"train": path, "validation": dev, "test": test}))
    assert len(both.evaluation["custom_choice"]) == 3 and len(both.validation["custom_choice"]) == 5
    assert not both.test_is_validation
    files = {"train": path, "validation": dev, "test": test}
    named = decoder_tasks.fingerprint(_decoder_task("choice", files))
    assert list(named) == ["test", "train", "validation"]  # by role, never by path
    assert named["test"] == f"sha256:{hashlib.sha256(Path(test).read_bytes()).hexdigest()}"


def test_math_problems_are_trained_and_scored_like_gsm8k(tmp_path):
    rows = [
        {"question": "Sam earns $1,000 twice. Total?", "answer": "2,000", "solution": "1,000 * 2 = 2,000"},
        {"question": "Half of 5?", "answer": 2.5},
        {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": 7, "solution": "3 + 4 = 7\n#### 7"},
    ]
    path = _write(tmp_path / "problems.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = decoder_tasks.load_decoder_task(_decoder_task("math", {"train": path, "test": path}))
    items = data.evaluation["custom_math"]
    assert [i["target"] for i in items] == ["2000", "2.5", "7"] and data.kinds == {"custom_math": "math"}
    assert [e["target"] for e in data.train] == ["1,000 * 2 = 2,000\n#### 2000", "#### 2.5", "3 + 4 = 7\n#### 7"]
    assert items[0]["prompt"].endswith("### Instruction:\nSam earns $1,000 twice. Total?\n\n### Response:\n")


@pytest.mark.slow
def test_a_choice_run_with_validation_and_test_files_reports_both(tmp_path):
    rows = [dict(CHOICES[i % 4], question=f"{CHOICES[i % 4]['question']} ({i})") for i in range(12)]
    train = _write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    dev = _write(tmp_path / "dev.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:4]))
    cfg = _cfg(
        tmp_path,
        _files(train=train, validation=dev, test=train),
        "eval.limit=3",
        "eval.batch_size=2",
        task="custom/choice",
        model="tiny-llama",
    )
    record, path = pipeline.run_experiment(cfg)
    metrics = record["final_metrics"]
    assert {"test_custom_choice_lmeval_acc", "validation_custom_choice_lmeval_acc"} <= set(metrics)
    assert record["data_sizes"] == {"train": 12, "eval_custom_choice": 12, "validation_custom_choice": 4}
    assert record["test_is_validation"] is False and record["evaluations"][0]["validation"]["custom_choice"]["n"] == 3
    assert "  custom_choice (validation) lmeval_acc" in summarise(record, path)


def _glue_like(task) -> dict[str, list[dict]]:
    """A loader in GLUE's shape: the test split's labels are hidden (-1)."""
    rows = [{"sentence": f"s {i}", "label": i % 2} for i in range(6)]
    return {"train": rows, "validation": rows[:2], "test": [{"sentence": "hidden", "label": -1}]}


def test_an_unread_split_is_not_checked_and_the_reason_is_glues():
    task = dict(compose("task=glue/sst2", "model=tiny").task, loader=f"{__name__}._glue_like")
    data = load_task(task)
    assert data.test is data.validation and len(data.train) == 6
    assert data.test_is_validation_reason == "task.test_split is null, as for GLUE, whose test labels are hidden"
    assert data.train[1]["where"] == "the train split row 2"


def test_an_unreachable_hub_keeps_its_cause_in_the_sentence(monkeypatch):
    import datasets

    from experiments.tasks.files import read_hub

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataUnavailable) as stop:
        read_hub("nyu-mll/glue", "sst2", columns="sentence, label")
    assert str(stop.value) == (
        "Cannot load nyu-mll/glue (sst2) from the hub (ConnectionError: Couldn't reach 'nyu-mll/glue' on the Hub "
        "(LocalEntryNotFoundError)); connect once to cache it, or point at local files with columns sentence, label "
        "with task.data_files={train: ..., ...}."
    )


def test_a_decoder_summary_marks_the_validation_split_and_the_carved_share(tmp_path):
    record = {
        "family": "causal",
        "method": "lora",
        "model": "smollm2-135m",
        "task": "custom/choice",
        "seed": 0,
        "trainable_params": 10,
        "total_params": 100,
        "layers": [],
        "eval_protocol": "lm-eval",
        "evaluated_examples": {"custom_choice": 2},
        "final_metrics": {"test_custom_choice_lmeval_acc": 0.5},
        "data_provenance": {"eval/custom_choice": "validation: 2 items carved from items.jsonl"},
        "test_is_validation": True,
        "test_is_validation_reason": "no test file was given",
        "data_notes": ["validation: 2 of the 20 train rows, carved with task.validation_share=0.1"],
        "wall_seconds": 1.0,
        "train_seconds": 0.5,
        "eval_seconds": 0.5,
        "steps": 2,
    }
    lines = summarise(record, tmp_path / "r.json").splitlines()
    assert (
        "evaluation   protocol lm-eval; the test figures are the validation split's (no test file was given)" in lines
    )
    assert "  custom_choice lmeval_acc 0.5000  (n=2)" in lines
    assert "data         validation: 2 of the 20 train rows, carved with task.validation_share=0.1" in lines
