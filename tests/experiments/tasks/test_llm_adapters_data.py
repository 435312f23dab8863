"""LLM-Adapters' commonsense files (its eight test sets and Commonsense170K's schema), offline: tiny files in its schema
read through task.data_files, both scoring protocols on their items, the validation carve of task.validation_size, and
how the data fingerprint names each file."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from experiments.errors import DataUnavailable
from experiments.evaluation.extraction import extract_choice
from experiments.evaluation.lmeval import write_tasks
from experiments.tasks import decoder as tasks
from experiments.tasks.decoder import llm_adapters, offline
from experiments.tasks.decoder.prompts import ANSWER_LEAD, HEADER, wrap

CONF = Path(__file__).resolve().parents[3] / "conf"
EIGHT = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa"]
QUESTION = "Please choose the correct answer to the question"


def _row(instruction: str, answer: str) -> dict:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def _numbered(lead: str, body: str, word: str, options: list[str], answer: int, inline: bool = False) -> dict:
    listed = " ".join(f"{word}{i}: {o}" for i, o in enumerate(options, 1))
    words = "/".join(f"{word.lower()}{i}" for i in range(1, len(options) + 1))
    tail = f" Answer format: {words}" if inline else f"\n\nAnswer format: {words}"  # WinoGrande's rows: one line
    return _row(f"{lead}: {body}\n\n{listed}{tail}", f"{word.lower()}{answer}")


# A few rows per task, written as LLM-Adapters' dataset/<task>/test.json files are (ARC with 3 and 5 options too).
ROWS = {
    "boolq": [
        _row(f"Please answer the following question with true or false, question: {q}?\n\nAnswer format: true/false", a)
        for q, a in [("is ice frozen water", "true"), ("can penguins fly", "false")]
    ],
    "piqa": [
        _numbered(
            "Please choose the correct solution to the question", "Open a jar", "Solution", ["Twist.", "Freeze."], 1
        ),
        _numbered(
            "Please choose the correct solution to the question", "Dry hair", "Solution", ["Fridge.", "Towel."], 2
        ),
    ],
    "siqa": [_numbered(QUESTION, "Ana lost her phone. How does she feel?", "Answer", ["proud", "upset", "bored"], 2)],
    "hellaswag": [
        _numbered(
            "Please choose the correct ending to complete the given sentence",
            "Cooking: A man cracks an egg into a pan.",
            "Ending",
            ["it flies away.", "he fries it.", "it sings.", "the pan melts."],
            2,
        )
    ],
    "winogrande": [
        _numbered(
            "Please choose the correct answer to fill in the blank to complete the given sentence",
            "Sarah was a better surgeon than Maria so _ got the easier cases.",
            "Option",
            ["Sarah", "Maria"],
            2,
            inline=True,
        )
    ],
    "arc_e": [
        _numbered(QUESTION, "Which is a gas at room temperature?", "Answer", ["ice", "steam", "rock", "wood"], 2),
        _numbered(QUESTION, "What do plants need?", "Answer", ["light", "noise", "sand"], 1),
    ],
    "arc_c": [_numbered(QUESTION, "Which is a metal?", "Answer", ["wood", "glass", "salt", "paper", "iron"], 5)],
    "obqa": [_numbered(QUESTION, "The sun is a", "Answer", ["planet", "star", "moon", "comet"], 2)],
}
TRAIN_ROWS = [row for rows in ROWS.values() for row in rows]  # Commonsense170K is these tasks' train rows, mixed


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=4))  # LLM-Adapters' files are one JSON list
    return str(path)


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    folders = {n: llm_adapters.TEST_FILES[n].path for n in EIGHT}  # the repository's own layout
    written = {name: _write(tmp_path / folder, ROWS[name]) for name, folder in folders.items()}
    return {"train": _write(tmp_path / "ft-training_set" / "commonsense_170k.json", TRAIN_ROWS), **written}


def _task(data_files: dict[str, str] | None, **extra) -> dict:
    return {"name": "all", "train_on": ["commonsense170k"], "evaluate_on": EIGHT, "data_files": data_files, **extra}


def _sha(path: str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_rows_parse_as_choice_items_in_the_suites_prompt_format(files):
    data = tasks.load_decoder_task(_task(files))
    assert data.kinds == dict.fromkeys(EIGHT, "choice")
    for name in EIGHT:
        assert data.provenance[f"eval/{name}"] == f"local file {files[name]} (LLM-Adapters' schema)"
        for item, row in zip(data.evaluation[name], ROWS[name], strict=True):
            assert item["prompt"] == wrap(row["instruction"]) and item["prompt"].startswith(HEADER)
            assert item["answers"][item["label"]] == row["answer"]
    assert [i["answers"] for i in data.evaluation["arc_e"]][1] == ["answer1", "answer2", "answer3"]
    assert data.evaluation["arc_c"][0]["answers"] == [f"answer{i}" for i in range(1, 6)]
    assert data.evaluation["winogrande"][0]["answers"] == ["option1", "option2"]
    # trained in the same format: the prompt a test item is asked with, answered with its output
    assert data.train[0] == {"prompt": wrap(TRAIN_ROWS[0]["instruction"]), "target": TRAIN_ROWS[0]["output"]}


def test_answers_extract_by_generation_and_score_as_multiple_choice(files, tmp_path):
    data = tasks.load_decoder_task(_task(files))
    for name in EIGHT:
        for item, row in zip(data.evaluation[name], ROWS[name], strict=True):
            gold = item["answers"][item["label"]]
            assert extract_choice(row["output"], item["answers"]) == gold == row["answer"]
            wrong = item["answers"][item["label"] - 1]
            assert extract_choice(f"{wrong}. Then {gold} maybe", item["answers"]) == wrong  # the first answer word
    write_tasks(data.evaluation, data.kinds, tmp_path / "lm-eval", 16)
    written = [json.loads(line) for line in (tmp_path / "lm-eval" / "siqa.jsonl").read_text().splitlines()]
    assert written[0]["context"] == data.evaluation["siqa"][0]["prompt"] + ANSWER_LEAD
    assert written[0]["answers"] == ["answer1", "answer2", "answer3"] and written[0]["label"] == 1
    config = yaml.safe_load((tmp_path / "lm-eval" / "siqa.yaml").read_text())
    assert config["output_type"] == "multiple_choice" and config["doc_to_choice"] == "answers"


def test_validation_size_carves_exactly_n_training_items_with_a_fixed_seed(files):
    data = tasks.load_decoder_task(_task(files, validation_size=5, split_seed=0))
    held = data.validation["commonsense170k"]
    assert len(held) == 5 and len(data.train) == len(TRAIN_ROWS) - 5
    assert data.kinds["commonsense170k"] == "choice"  # scored like a test set, against each row's answer
    train_prompts, held_prompts = {e["prompt"] for e in data.train}, {i["prompt"] for i in held}
    assert not train_prompts & held_prompts
    assert train_prompts | held_prompts == {wrap(r["instruction"]) for r in TRAIN_ROWS}
    by_prompt = {wrap(r["instruction"]): r for r in TRAIN_ROWS}
    assert all(i["answers"][i["label"]] == by_prompt[i["prompt"]]["answer"] for i in held)
    assert data.validation_carved == {"size": 5, "seed": 0, "rows": 5, "of": len(TRAIN_ROWS)}
    assert data.provenance["train/commonsense170k"].endswith("less the 5 validation items")
    assert "task.validation_size=5" in data.provenance["validation/commonsense170k"]
    assert [n for n in data.notes if n.startswith(f"validation: 5 of the {len(TRAIN_ROWS)} training items")]
    assert data.evaluation == tasks.load_decoder_task(_task(files)).evaluation  # the test items are untouched
    again = tasks.load_decoder_task(_task(files, validation_size=5, split_seed=0))
    other = tasks.load_decoder_task(_task(files, validation_size=5, split_seed=1))
    assert again.validation == data.validation and other.validation != data.validation


def test_the_data_fingerprint_names_each_file_by_role_and_content(files, tmp_path):
    print_ = tasks.fingerprint(_task(files))
    assert print_ == {"train/commonsense170k": _sha(files["train"]), **{f"eval/{n}": _sha(files[n]) for n in EIGHT}}
    copies = {key: shutil.copy(path, tmp_path / f"copy-{key}.json") for key, path in files.items()}
    assert tasks.fingerprint(_task(copies)) == print_  # by content, never by path
    Path(copies["piqa"]).write_text(Path(copies["piqa"]).read_text().replace("Twist", "Turn"))
    changed = {role for role, name in tasks.fingerprint(_task(copies)).items() if name != print_[role]}
    assert changed == {"eval/piqa"}


def test_commonsense_all_names_llm_adapters_files_at_their_commit_and_the_original_ones_on_request():
    config = yaml.safe_load((CONF / "task" / "commonsense" / "all.yaml").read_text())
    named = tasks.fingerprint(config)
    assert named["train/commonsense170k"] == "hub:zwhe99/commonsense_170k:train"
    commit = llm_adapters.COMMIT
    assert named["eval/boolq"] == f"github:AGI-Edgerunners/LLM-Adapters@{commit}:dataset/boolq/test.json"
    assert named["eval/siqa"] == f"github:AGI-Edgerunners/LLM-Adapters@{commit}:dataset/social_i_qa/test.json"
    original = tasks.fingerprint({**config, "evaluate_from": "original", "revision": "abc123"})
    assert original["eval/boolq"] == "hub:google/boolq:validation"
    assert original["eval/arc_c"] == "hub:allenai/ai2_arc/ARC-Challenge:test"
    assert original["train/commonsense170k"] == "hub:zwhe99/commonsense_170k:train@abc123"
    single = yaml.safe_load((CONF / "task" / "commonsense" / "boolq.yaml").read_text())
    assert tasks.fingerprint(single)["eval/boolq"] == "hub:google/boolq:validation"  # trained on BoolQ: original


def test_the_cached_copy_is_read_only_when_it_is_the_commits_file(files, tmp_path, monkeypatch):
    assert llm_adapters.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # as `git hash-object`
    monkeypatch.setenv("TERA_SUITE_CACHE", str(tmp_path / "cache"))
    content = json.dumps(ROWS["boolq"]).encode()
    file = llm_adapters.RepoFile("dataset/boolq/test.json", llm_adapters.git_blob_id(content))
    monkeypatch.setitem(llm_adapters.TEST_FILES, "boolq", file)
    cached = llm_adapters.cached_path(file)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(content)
    task = _task({"train": files["train"]}, evaluate_on=["boolq"])
    data = tasks.load_decoder_task(task)
    assert len(data.evaluation["boolq"]) == 2 and "at commit 816657208af4" in data.provenance["eval/boolq"]
    cached.write_bytes(content.replace(b"penguins", b"puffins"))
    with pytest.raises(DataUnavailable, match="is not LLM-Adapters' dataset/boolq/test.json .*git blob id differs"):
        tasks.load_decoder_task(task)


def _bigbench(cache: Path) -> None:
    examples = {
        "strategyqa": [
            {"input": f"Question {i}?", "target_scores": {"Yes": i % 2, "No": 1 - i % 2}} for i in range(20)
        ],
        "winowhy": [
            {"input": f"Sentence {s}. The 'it' refers to A because {k}.", "target_scores": {"correct": k % 2}}
            for s in range(5)
            for k in range(2)
        ],
    }
    for name, rows in examples.items():
        folder = cache / f"bigbench-{offline.BIGBENCH_VERSION}" / name
        folder.mkdir(parents=True)
        (folder / "task.json").write_text(json.dumps({"examples": rows}))


def test_offline_choice_items_carve_their_validation_items_too(tmp_path, monkeypatch):
    monkeypatch.setenv("TERA_SUITE_CACHE", str(tmp_path))
    _bigbench(tmp_path)
    task = {
        "name": "offline",
        "train_on": ["bb_strategyqa", "bb_winowhy"],
        "evaluate_on": ["bb_strategyqa", "bb_winowhy"],
    }
    whole = tasks.load_decoder_task(task)
    data = tasks.load_decoder_task({**task, "validation_size": 6})
    assert sum(len(v) for v in data.validation.values()) == 6 and len(data.train) == len(whole.train) - 6
    held = {i["prompt"] for items in data.validation.values() for i in items}
    assert not held & {e["prompt"] for e in data.train} and data.evaluation == whole.evaluation
    assert all(data.kinds[name] == "choice" for name in data.validation)


def test_what_cannot_be_carved_or_read_is_one_sentence(files, tmp_path):
    with pytest.raises(DataUnavailable, match="validation_size and task.tune_holdout both"):
        tasks.load_decoder_task(_task(files, validation_size=2, tune_holdout=0.1))
    everything = len(TRAIN_ROWS)
    with pytest.raises(DataUnavailable, match=f"validation_size={everything} would carve all {everything} training"):
        tasks.load_decoder_task(_task(files, validation_size=everything))
    with pytest.raises(
        DataUnavailable, match="piqa/test.json item 1 does not fit: its answer words solution1/solution2"
    ):
        tasks.load_decoder_task(_task({**files, "boolq": files["piqa"]}))
    no_answer = _write(tmp_path / "c170k.json", [{k: v for k, v in r.items() if k != "answer"} for r in TRAIN_ROWS])
    with pytest.raises(DataUnavailable, match="c170k.json item .* has no field 'answer'; commonsense170k rows need"):
        tasks.load_decoder_task(_task({**files, "train": no_answer}, validation_size=3))
    math = _write(tmp_path / "mm.json", [{"query": "1+1?", "response": "The answer is: 2"}] * 3)
    gsm8k = _write(tmp_path / "g.json", [{"question": "1+1?", "answer": "#### 2"}])
    metamath = {"name": "m", "train_on": ["metamath"], "evaluate_on": ["gsm8k"], "validation_size": 1}
    with pytest.raises(DataUnavailable, match="metamath rows .* carry no answer word to score"):
        tasks.load_decoder_task({**metamath, "data_files": {"train": math, "gsm8k": gsm8k}})
