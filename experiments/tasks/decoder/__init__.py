"""Decoder tasks as data: public datasets' rows (``rows.py``) and your own (``custom.py``) as items in the LLM-Adapters
prompt format, the registry of where each comes from (``sources.py``), the plan of what a run reads (``plan.py``,
also the data half of its identity), and the reading itself (``load.py``). Offline data: ``offline.py``; LLM-Adapters'
own commonsense files (its eight test sets, Commonsense170K's schema): ``llm_adapters.py``."""

from experiments.tasks.decoder.custom import custom_choice, custom_fields, custom_math
from experiments.tasks.decoder.load import DecoderData, load_decoder_task, training_example, tune_holdout
from experiments.tasks.decoder.plan import Part, evaluate_from, fingerprint, plan_parts
from experiments.tasks.decoder.sources import CUSTOM_SOURCES, SOURCES, Source, convert_rows, source

__all__ = [
    "CUSTOM_SOURCES",
    "SOURCES",
    "DecoderData",
    "Part",
    "Source",
    "convert_rows",
    "custom_choice",
    "custom_fields",
    "custom_math",
    "evaluate_from",
    "fingerprint",
    "load_decoder_task",
    "plan_parts",
    "source",
    "training_example",
    "tune_holdout",
]
