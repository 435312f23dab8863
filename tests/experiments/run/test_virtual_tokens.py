"""Prompt Tuning and P-Tuning through the run pipeline: refused in one sentence (exit 2) where they cannot work, scored
at the right positions by lm-eval and by generation, rendered with rank "n/a", and run end to end by run.py.

The scoring checks rest on an identity: Prompt Tuning whose virtual tokens are the embeddings of tokens T is the
frozen model reading T before the input. So every score of the prompt-tuned model must equal the base model's score
with T's ids written in front, computed here by hand, without lm-eval and without PEFT.
"""

from __future__ import annotations

import json

import pytest
import torch

from baselines import VIRTUAL_TOKEN_METHODS, apply_method
from experiments.evaluation.generation import generate
from experiments.evaluation.virtual_tokens import prepended_positions, virtual_token_generation
from experiments.models.decoders import tiny_llama
from experiments.run import cli
from experiments.run.checkpoints import Checkpointer
from experiments.run.summary import summarise
from experiments.tables.render import display_frame
from tests.helpers import cli as run_cli
from tests.helpers import last_error

PREFIX = "Answer the question"  # the text whose embeddings become the virtual tokens
CONTEXT = "Question: is ice frozen water?\nAnswer:"
CONTINUATIONS = [" yes", " no, it is not"]


def _preflight_error(capsys, *argv: str) -> str:
    """The sentence run.py prints for ``argv``, checked in this process (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as stop:
        cli.preflight(list(argv))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0].removeprefix("error: ")


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("method", sorted(VIRTUAL_TOKEN_METHODS))
def test_an_encoder_task_is_refused_before_anything_loads(capsys, method):
    assert _preflight_error(capsys, f"method={method}", "model=tiny", "task=glue/sst2") == (
        f"Method {method} prepends trained virtual tokens to a decoder's input and runs on decoder tasks only "
        f"(commonsense/*, math/*, custom/choice, custom/math), not on the classification task glue/sst2; pick a "
        f"decoder task and model, or another method."
    )


@pytest.mark.parametrize("method", sorted(VIRTUAL_TOKEN_METHODS))
def test_target_modules_are_refused_before_anything_loads(capsys, method):
    argv = [f"method={method}", "model=tiny-llama", "task=math/gsm8k", "method.target_modules=[q_proj]"]
    assert _preflight_error(capsys, *argv) == (
        f"Method {method} trains virtual tokens and adapts no layer, so method.target_modules=['q_proj'] would be "
        f"ignored; drop it (method.target_modules=null)."
    )


def test_an_option_of_another_method_is_refused_by_peft_config(capsys):
    message = _preflight_error(
        capsys, "method=prompt-tuning", "model=tiny-llama", "task=math/gsm8k", "+method.peft.r=8"
    )
    assert message.startswith("Method 'prompt-tuning' does not accept these options (")


def test_good_command_lines_pass(capsys):
    cli.preflight(["-m", "method=prompt-tuning,p-tuning", "model=tiny-llama", "task=math/gsm8k", "train.max_steps=1"])
    cli.preflight(
        ["method=p-tuning", "model=llama2-7b", "task=commonsense/all", "method.peft.encoder_hidden_size=1024"]
    )
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------------ scoring positions


@pytest.fixture(scope="module")
def prompted():
    """The tiny LLaMA with Prompt Tuning whose virtual tokens are PREFIX's embeddings; its tokenizer; PREFIX's ids."""
    torch.manual_seed(0)
    model, tokenizer = tiny_llama(seed=0)
    prefix = tokenizer(PREFIX, add_special_tokens=False).input_ids
    adapted = apply_method(model, "prompt-tuning", None, task_type="CAUSAL_LM", num_virtual_tokens=len(prefix))
    with torch.no_grad():
        words = adapted.get_base_model().get_input_embeddings()
        adapted.prompt_encoder["default"].embedding.weight.copy_(words(torch.tensor(prefix)))
    return adapted.eval(), tokenizer, prefix


def _base_loglikelihood(base, ids: list[int], continuation: list[int]) -> float:
    with torch.no_grad():
        logp = base(input_ids=torch.tensor([ids + continuation])).logits.log_softmax(-1)[0]
    start = len(ids) - 1  # the logits at position i predict token i + 1
    return float(sum(logp[start + i, token] for i, token in enumerate(continuation)))


def test_lm_eval_scores_the_inputs_own_positions(prompted):
    """A forward returns the virtual tokens' logits first; lm-eval's HFLM, which the suite scores decoders with, must
    drop them (it does: it reads logits beyond the input's length as virtual tokens)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer, prefix = prompted
    assert prepended_positions(model) == len(prefix) and prepended_positions(model.get_base_model()) == 0
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[1] == len(prefix) + 3
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    requests = [Instance("loglikelihood", {}, (CONTEXT, c), i) for i, c in enumerate(CONTINUATIONS)]
    scores = [score for score, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    expected = []
    for continuation in CONTINUATIONS:
        context_ids, continuation_ids = lm._encode_pair(CONTEXT, continuation)
        expected.append(_base_loglikelihood(model.get_base_model(), prefix + context_ids, continuation_ids))
    assert scores == pytest.approx(expected, rel=1e-4, abs=1e-4)


def _base_greedy(base, tokenizer, ids: list[int], count: int) -> list[int]:
    with torch.no_grad():
        out = base.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=count,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return out[0, len(ids) :].tolist()


def test_generated_answers_follow_the_prompt_not_the_virtual_tokens(prompted):
    """The suite's generation protocol and lm-eval's generate_until (GSM8K's answers) both give exactly what the base
    model writes after PREFIX + prompt: the prompt's ids are cut from PEFT's output, and the KV cache holds the
    virtual tokens once (PEFT 0.21 under transformers 5 injects them at every step without the repair)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer, prefix = prompted
    prompt_ids = tokenizer(CONTEXT).input_ids
    expected = tokenizer.decode(_base_greedy(model.get_base_model(), tokenizer, prefix + prompt_ids, 6))
    assert generate(model, tokenizer, [CONTEXT], max_new_tokens=6, batch_size=1, desc="t") == [expected]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    request = Instance("generate_until", {}, (CONTEXT, {"until": ["@@@"], "max_gen_toks": 6, "do_sample": False}), 0)
    assert lm.tok_encode(CONTEXT) == prompt_ids
    with virtual_token_generation(model):  # as evaluate_with_lm_eval runs it
        assert lm.generate_until([request], disable_tqdm=True) == [expected]
    assert "prepare_inputs_for_generation" not in vars(model)  # the repair is undone after the block


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("method", sorted(VIRTUAL_TOKEN_METHODS))
def test_a_checkpoint_restores_the_trained_prompt(tmp_path, method):
    """A resumed run (Slurm requeue) finds the virtual tokens and the prompt encoder by name in a fresh model."""
    from tests.toy_models import tiny_llama as toy_llama

    def adapted():
        model = apply_method(toy_llama(), method, None, task_type="CAUSAL_LM", num_virtual_tokens=4)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    trained, optimizer, scheduler = adapted()
    trained(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    checkpoint = Checkpointer(tmp_path / "run.pt", every=1, signature="s")
    checkpoint.save(trained, optimizer, scheduler, step=1, state={})
    fresh, optimizer, scheduler = adapted()
    assert checkpoint.load(fresh, optimizer, scheduler)["step"] == 1
    prompts = [model.get_prompt(batch_size=1) for model in (trained, fresh)]
    assert torch.equal(*prompts) and set(torch.load(tmp_path / "run.pt")["trainable"]) == {
        name for name, p in fresh.named_parameters() if p.requires_grad
    }


# ------------------------------------------------------------------------------------------------ tables, summary


def _row(method: str, rank: float | None) -> dict:
    return {
        "method": method,
        "expected": {},
        "seeds": [0],
        "trainable_params": 640,
        "frozen_factor_values": 0,
        "median_rank": rank,
        "train_seconds": 1.0,
        "runs_found": 1,
    }


def test_tables_show_rank_n_a_for_virtual_tokens():
    rows = [_row("prompt-tuning", None), _row("p-tuning", None), _row("full", None), _row("lora", 8)]
    shown = display_frame(rows, ["method"], [])["median rank of dW"].tolist()
    assert shown == ["n/a", "n/a", "full FT", "8"]


# ------------------------------------------------------------------------------------------------ end to end

BOOLQ_ROWS = [
    {"question": "is the sun a star", "answer": True, "passage": "The Sun is the star at the centre."},
    {"question": "do fish breathe air with lungs", "answer": False, "passage": "Most fish use gills."},
    {"question": "is ice frozen water", "answer": True, "passage": "Ice is water frozen into a solid."},
    {"question": "can penguins fly", "answer": False, "passage": "Penguins are flightless birds."},
]
GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "Half of 18?", "answer": "18 / 2 = <<18/2=9>>9\n#### 9"},
]
# One choice task (lm-eval log-likelihood, generation) and one math task (lm-eval's and the suite's generation); about
# 10 s each, so not marked slow.
END_TO_END = [
    ("prompt-tuning", "commonsense/boolq", BOOLQ_ROWS, {"boolq_lmeval_acc", "boolq_llmadapters_gen_acc"}),
    ("p-tuning", "math/gsm8k", GSM8K_ROWS, {"gsm8k_lmeval_exact_match_strict", "gsm8k_llmadapters_gen_exact_match"}),
]


@pytest.mark.parametrize(("method", "task", "rows", "metrics"), END_TO_END, ids=[e[0] for e in END_TO_END])
def test_run_py_trains_evaluates_and_records_one_step(tmp_path, method, task, rows, metrics):
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    proc = run_cli(
        f"method={method}",
        "model=tiny-llama",
        f"task={task}",
        f"+task.data_files={{train: {data}, test: {data}}}",
        "train.max_steps=1",
        "train.batch_size=2",
        "train.checkpoint_every=1",
        "eval.protocol=both",
        "eval.limit=2",
        "eval.batch_size=2",
        "eval.max_new_tokens=6",
        "logger=none",
        f"output_dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [path] = (tmp_path / "runs").glob(f"{method}-{task.replace('/', '-')}-tiny-llama-s0-*.json")
    record = json.loads(path.read_text())
    d, n = 64, 20  # conf/model/tiny-llama's hidden size, conf/method's virtual tokens
    expected = n * d if method == "prompt-tuning" else n * d + 3 * d * d + 3 * d
    assert record["complete"] and record["status"] == "complete" and record["steps"] == 1
    assert record["trainable_params"] == expected and record["virtual_tokens"] == n
    assert record["layers"] == [] and record["median_rank"] is None
    reason = f"n/a: {method} trains virtual tokens prepended to the input and adapts no weight (no dW)"
    assert record["rank_reason"] == reason
    assert {f"test_{metric}" for metric in metrics} <= set(record["final_metrics"])
    assert record["learning_rate"] == record["config"]["method"]["decoder_lr"]
    assert not list((tmp_path / "runs").rglob("*.pt"))  # the checkpoint of step 1 was removed with the record
    assert f"rank of dW   {reason}" in proc.stdout and summarise(record, path).splitlines()[2].endswith(reason)


def test_run_py_refuses_an_encoder_task_with_exit_status_2(tmp_path):
    proc = run_cli("method=p-tuning", "model=tiny", "task=glue/sst2", "logger=none", f"output_dir={tmp_path}")
    assert proc.returncode == 2 and last_error(proc).startswith("error: Method p-tuning prepends trained virtual")
    assert list(tmp_path.iterdir()) == []
