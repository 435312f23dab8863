"""The dialogue table's text metrics against hand-worked figures and direct calls of each library (sacreBLEU,
rouge_score, nltk's METEOR, bert_score on the offline MiniLM), plus the WordNet setup's offline parts."""

from __future__ import annotations

import gzip
import json

import nltk
import numpy as np
import pytest
import sacrebleu
from nltk.tokenize import word_tokenize
from nltk.translate.meteor_score import meteor_score
from rouge_score.rouge_scorer import RougeScorer

from experiments.evaluation import text_metrics as tm
from experiments.evaluation import wordnet_setup

PREDICTIONS = ["the cat sat on the mat", "i like to ski . what about you ?", "my dog is big and loves to run ."]
REFERENCES = [["the cat sat on a mat"], ["i love skiing . and you ?"], ["my dog is large and likes running ."]]
MULTI_REFERENCES = [
    ["a cat was on the mat", "the cat sat on a mat"],
    ["i love skiing . and you ?", "i like to ski , do you ?"],
    ["my dog is large and likes running ."],  # items may have different numbers of references
]

needs_wordnet = pytest.mark.skipif(tm.find_wordnet() is None, reason="WordNet is not installed (`make wordnet`)")


def nltk_meteor(prediction: str, references: list[str]) -> float:
    tokens = [word_tokenize(r, preserve_line=True) for r in references]
    return meteor_score(tokens, word_tokenize(prediction, preserve_line=True), alpha=0.9, beta=3, gamma=0.5)


def test_bleu_by_hand_and_against_sacrebleu():
    # 13a tokens, one reference: 1-gram 5/6 ("the" clipped to 1), 2-gram 3/5, 3-gram 2/4, 4-gram 1/3, no brevity penalty
    assert tm.bleu(PREDICTIONS[:1], REFERENCES[:1]).scores["bleu"] == pytest.approx(
        100 * (5 / 6 * 3 / 5 * 2 / 4 / 3) ** 0.25
    )
    direct = sacrebleu.corpus_bleu(
        PREDICTIONS, [[refs[0] for refs in REFERENCES]], tokenize="13a", smooth_method="none"
    )
    assert tm.bleu(PREDICTIONS, REFERENCES).scores["bleu"] == pytest.approx(direct.score)
    assert tm.bleu(["a b c d e"], [["a b c d e"]]).scores["bleu"] == pytest.approx(100.0)
    # case-sensitive and no smoothing: "The Cat Sat On" shares no 4-gram with its lowercase twin, so BLEU is 0
    assert tm.bleu(["The Cat Sat On"], [["the cat sat on"]]).scores["bleu"] == 0.0


def test_bleu_with_several_references_matches_sacrebleu_streams():
    streams = [[refs[k] if k < len(refs) else None for refs in MULTI_REFERENCES] for k in range(2)]
    direct = sacrebleu.corpus_bleu(PREDICTIONS, streams, tokenize="13a", smooth_method="none")
    assert tm.bleu(PREDICTIONS, MULTI_REFERENCES).scores["bleu"] == pytest.approx(direct.score)
    # an exact second reference makes a one-item corpus perfect
    assert tm.bleu(PREDICTIONS[:1], [["a dog", PREDICTIONS[0]]]).scores["bleu"] == pytest.approx(100.0)


def test_rouge_l_by_hand_and_against_rouge_score():
    # LCS of "the cat sat on the mat" and "the cat sat on a mat" is 5 tokens of 6 each: P = R = F = 5/6
    assert tm.rouge_l_per_item(PREDICTIONS[:1], REFERENCES[:1]) == [pytest.approx(5 / 6)]
    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    direct = [scorer.score(refs[0], pred)["rougeL"].fmeasure for pred, refs in zip(PREDICTIONS, REFERENCES)]
    assert tm.rouge_l(PREDICTIONS, REFERENCES).scores["rouge_l"] == pytest.approx(100 * np.mean(direct))
    # several references: the best one by F-measure, per item
    best = [max(scorer.score(r, p)["rougeL"].fmeasure for r in refs) for p, refs in zip(PREDICTIONS, MULTI_REFERENCES)]
    assert tm.rouge_l_per_item(PREDICTIONS, MULTI_REFERENCES) == pytest.approx(best)


def test_rouge_l_bootstrap_mid_is_seeded_and_leaves_numpy_alone():
    values = [0.1, 0.5, 0.9, 0.2, 0.7]
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    mid = tm.bootstrap_mid(values, seed=0)
    assert np.array_equal(np.random.get_state()[1], before)
    assert tm.bootstrap_mid(values, seed=0) == mid
    assert min(values) <= mid <= max(values) and abs(mid - np.mean(values)) < 0.05
    assert tm.bootstrap_mid([0.4] * 7) == pytest.approx(0.4)


@needs_wordnet
def test_meteor_by_hand_and_against_nltk():
    # identical 6 tokens: F = 1, one chunk, penalty 0.5 * (1/6)^3
    assert tm.meteor(PREDICTIONS[:1], [PREDICTIONS[:1]]).scores["meteor"] == pytest.approx(100 * (1 - 0.5 / 216))
    direct = [nltk_meteor(p, refs) for p, refs in zip(PREDICTIONS, REFERENCES)]
    assert tm.meteor(PREDICTIONS, REFERENCES).scores["meteor"] == pytest.approx(100 * np.mean(direct))
    # WordNet is used: "car" ~ "auto" is a synonym match, so all 4 tokens align in one chunk (nltk matches synonyms
    # after Porter stemming, so "big" ~ "large" would not: "large" is "larg" by then, as in HiRA's nltk 3.8.1)
    assert tm.meteor(["my car is red"], [["my auto is red"]]).scores["meteor"] == pytest.approx(100 * (1 - 0.5 / 64))


@needs_wordnet
def test_meteor_takes_the_best_reference():
    direct = [max(nltk_meteor(p, [r]) for r in refs) for p, refs in zip(PREDICTIONS, MULTI_REFERENCES)]
    outcome = tm.meteor(PREDICTIONS, MULTI_REFERENCES)
    assert outcome.scores["meteor"] == pytest.approx(100 * np.mean(direct))
    assert outcome.reason is None and outcome.settings["wordnet_version"] == "3.0"


def test_meteor_without_wordnet_is_none_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(wordnet_setup, "nltk_data_dir", lambda: tmp_path / "ours")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "elsewhere")])
    outcome = tm.meteor(PREDICTIONS, REFERENCES)
    assert outcome.scores == {"meteor": None}
    assert "make wordnet" in outcome.reason and outcome.settings["wordnet_path"] is None
    assert tm.average({"bleu": 1.0, "meteor": None})[0] is None


def test_average_is_the_plain_mean_of_the_papers_six_columns():
    # HiRA's Table 2, Llama-2 LoRA: (1.82 + 84.41 + 84.71 + 84.16 + 11.38 + 10.55) / 6 = 46.17
    row = {"bleu": 1.82, "bert_f1": 84.41, "bert_r": 84.71, "bert_p": 84.16, "meteor": 11.38, "rouge_l": 10.55}
    value, reason = tm.average(row | {"rouge_l_bootstrap_mid": 99.0})
    assert value == pytest.approx(46.171666, abs=1e-5) and reason is None
    value, reason = tm.average(row | {"bert_p": None})
    assert value is None and "missing: bert_p" in reason


def test_inputs_are_one_reference_list_per_prediction():
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        tm.check_inputs(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        tm.check_inputs(["a"], ["a reply"])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        tm.check_inputs(["a"], [[]])


def test_auto_bertscore_model_falls_back_to_minilm_and_says_so(monkeypatch):
    monkeypatch.setattr(tm, "hub_location", lambda name: (None, f"{name} is not reachable"))
    chosen = tm.choose_bertscore_model(None)
    assert (chosen.num_layers, chosen.comparable) == (6, False) and "roberta-large is not reachable" in chosen.choice
    assert chosen.location == tm.minilm_location()
    with pytest.raises(tm.BertScoreUnavailable, match="roberta-large is not reachable"):
        tm.choose_bertscore_model("roberta-large")
    monkeypatch.setattr(tm, "hub_location", lambda name: ("/cache/roberta-large", "from the local cache"))
    hub = tm.choose_bertscore_model(None)
    assert (hub.name, hub.num_layers, hub.comparable) == ("roberta-large", 17, True)
    assert not tm.choose_bertscore_model(None, num_layers=24).comparable


def test_an_unloadable_bertscore_model_is_none_with_a_reason(monkeypatch):
    monkeypatch.setattr(tm, "hub_location", lambda name: (None, f"{name} is not reachable"))
    outcome = tm.bertscore(PREDICTIONS, REFERENCES, model="roberta-large")
    assert outcome.scores == {"bert_p": None, "bert_r": None, "bert_f1": None}
    assert "roberta-large is not reachable" in outcome.reason


def byte_level_tokenizer_folder(path):
    """A 4-word RoBERTa tokenizer (byte-level BPE), saved the way a hub folder holds one."""
    from transformers import RobertaTokenizer

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    alphabet = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *alphabet])}
    merges = [("h", "e"), ("he", "y"), ("Ġ", "hey"), ("y", "o"), ("Ġ", "yo")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    RobertaTokenizer(vocab=vocab, merges=merges).save_pretrained(path)
    return str(path)


def test_bert_score_tokenizer_keeps_transformers_4_behaviour(tmp_path):
    from transformers import AutoTokenizer

    folder = byte_level_tokenizer_folder(tmp_path)
    plain = AutoTokenizer.from_pretrained(folder, use_fast=False)
    # bert_score asks for encode(..., add_prefix_space=True), which transformers 5 ignores
    fixed = tm.transformers5_tokenizer(plain, folder)
    assert fixed.convert_ids_to_tokens(fixed.encode("hey yo"))[1] == "Ġhey"
    assert fixed.build_inputs_with_special_tokens([]) == [fixed.bos_token_id, fixed.eos_token_id]


@pytest.fixture(scope="module")
def direct_minilm_scorer():
    from bert_score import BERTScorer

    return BERTScorer(model_type=tm.minilm_location(), num_layers=6, idf=False, rescale_with_baseline=False)


@pytest.mark.slow
def test_bertscore_on_minilm_matches_bert_score(direct_minilm_scorer):
    p, r, f = direct_minilm_scorer.score(PREDICTIONS, [refs[0] for refs in REFERENCES])
    outcome = tm.bertscore(PREDICTIONS, REFERENCES, model="minilm", device="cpu")
    got = [outcome.scores[k] for k in ("bert_p", "bert_r", "bert_f1")]
    assert got == pytest.approx([100 * p.mean().item(), 100 * r.mean().item(), 100 * f.mean().item()], abs=1e-4)
    same = tm.bertscore(PREDICTIONS[:1], [PREDICTIONS[:1]], model="minilm", device="cpu").scores
    assert same["bert_f1"] == pytest.approx(100.0, abs=1e-3)
    assert outcome.settings["num_layers"] == 6 and outcome.settings["comparable_to_paper"] is False


@pytest.mark.slow
def test_bertscore_takes_the_best_reference_per_column(direct_minilm_scorer):
    singles = [
        direct_minilm_scorer.score(PREDICTIONS, [refs[min(k, len(refs) - 1)] for refs in MULTI_REFERENCES])
        for k in (0, 1)
    ]
    best = [torch_max(singles[0][i], singles[1][i]).mean().item() * 100 for i in range(3)]
    outcome = tm.bertscore(PREDICTIONS, MULTI_REFERENCES, model="minilm", device="cpu")
    assert [outcome.scores[k] for k in ("bert_p", "bert_r", "bert_f1")] == pytest.approx(best, abs=1e-4)


def torch_max(a, b):
    import torch

    return torch.maximum(a, b)


@pytest.mark.slow
def test_score_generations_reports_every_column_and_setting():
    result = tm.score_generations(PREDICTIONS, MULTI_REFERENCES, bertscore_model="minilm", device="cpu")
    assert result["n_items"] == 3 and result["average"] == pytest.approx(tm.average(result)[0])
    assert result["bleu"] == pytest.approx(tm.bleu(PREDICTIONS, MULTI_REFERENCES).scores["bleu"])
    settings = result["settings"]
    assert "tok:13a" in settings["bleu"]["signature"] and "smooth:none" in settings["bleu"]["signature"]
    assert settings["rouge_l"]["use_stemmer"] is False
    assert settings["bertscore"]["rescale_with_baseline"] is False and settings["bertscore"]["idf"] is False
    assert settings["bertscore"]["model"].startswith("all-MiniLM-L6-v2") and settings["bertscore"]["num_layers"] == 6
    assert {"tokenizer", "wordnet_path", "alpha", "beta", "gamma"} <= set(settings["meteor"])
    assert settings["average"]["columns"] == ["bleu", "bert_f1", "bert_r", "bert_p", "meteor", "rouge_l"]
    json.dumps(result)  # a record can hold it as it is
    if result["meteor"] is None:
        assert result["average"] is None and "meteor" in result["reasons"]


def fake_lexnames_page(rows: int = 45) -> str:
    poses = ["adj", "adj", "adv", *["noun"] * 26, *["verb"] * 15, "adj"]
    body = "".join(f"{i:02d}\t{pos}.f{i}{'  ' if i == 18 else ''}\tdescription\n" for i, pos in enumerate(poses[:rows]))
    return f".TS\ncenter ;\nl l l.\n\\fBFile Number\\fP\t\\fBName\\fP\t\\fBContents\\fP\n_\n{body}.TE\n"


def test_lexnames_come_from_the_man_page_table():
    lines = wordnet_setup.lexnames_from_man_page(fake_lexnames_page()).splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.f0\t3" and lines[18] == "18\tnoun.f18\t1"
    assert lines[2] == "02\tadv.f2\t4" and lines[44] == "44\tadj.f44\t3"
    with pytest.raises(wordnet_setup.WordNetUnavailable, match="lists 44 files, not 45"):
        wordnet_setup.lexnames_from_man_page(fake_lexnames_page(44))


def test_wordnet_setup_without_apt_get_exits_2_with_one_sentence(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TERA_SUITE_CACHE", str(tmp_path))
    monkeypatch.setattr(wordnet_setup.shutil, "which", lambda name: None)
    assert wordnet_setup.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "apt-get" in err and "n/a" in err
    assert not wordnet_setup.is_complete() and not (tmp_path / "nltk_data" / "corpora" / "wordnet").exists()


def test_wordnet_assembly_from_unpacked_packages(tmp_path):
    unpacked = tmp_path / "root"
    (unpacked / wordnet_setup.WORDNET_FILES).mkdir(parents=True)
    for name in wordnet_setup.REQUIRED_FILES:
        if name != "lexnames":
            (unpacked / wordnet_setup.WORDNET_FILES / name).write_text(name)
    (unpacked / wordnet_setup.LEXNAMES_MAN_PAGE).parent.mkdir(parents=True)
    with gzip.open(unpacked / wordnet_setup.LEXNAMES_MAN_PAGE, "wt") as page:
        page.write(fake_lexnames_page())
    wordnet_setup.assemble(unpacked, {"wordnet-base": "1:3.0-37"}, tmp_path / "wordnet")
    assert wordnet_setup.is_complete(tmp_path / "wordnet")
    assert wordnet_setup.read_source(tmp_path / "wordnet") == {"source": "Debian", "wordnet-base": "1:3.0-37"}
