"""tune.adapter_sharing on an ALBERT student (one layer applied L times): what the README states."""

from __future__ import annotations

import pytest
import torch

from edgekit.tune.adapter import FFNAdapters


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_torch_thread):
    """Tiny models: one thread is fastest on a shared machine."""


@pytest.fixture(scope="module")
def student(tiny_classifier):
    from edgekit.checkpoint import load_encoder, load_tokenizer
    from edgekit.tune.model import Base

    return Base(load_encoder(tiny_classifier)).eval(), load_tokenizer(tiny_classifier)


def _spec(student, method, sharing="per-depth"):
    from edgekit.tune import load_tune_config
    from edgekit.tune.stage import build_spec

    tune = {"method": method, "prompts": 6}
    if sharing:
        tune["adapter_sharing"] = sharing
    cfg = load_tune_config(None, {"task": {"name": "tnews", "max_length": 24}, "tune": tune})
    base, tokenizer = student
    return build_spec(cfg, base, tokenizer, num_labels=3, pooling="cls")


def _trainable(student, spec) -> int:
    from edgekit.tune.model import TuneModule

    return sum(p.numel() for p in TuneModule(student[0], spec, seed=0).trainable().values())


def test_per_depth_is_depth_times_the_shared_adapter(student):
    base = student[0]
    hidden, depth, r = 32, 4, 16  # the tiny student: one layer applied 4 times, hidden 32, 2 heads, r = 32 / 2
    assert (base.hidden, base.depth) == (hidden, depth)
    option = _trainable(student, _spec(student, "option", None))
    per_depth_spec, shared_spec = _spec(student, "option-adapter", "per-depth"), _spec(student, "option-adapter", "shared")
    assert (per_depth_spec.adapter_count, shared_spec.adapter_count, shared_spec.adapter_rank) == (depth, 1, r)
    one_adapter = 2 * hidden * r + r + hidden + 1  # W1, b1, W2, b2, λ = 1,073
    assert _trainable(student, shared_spec) == option + one_adapter
    assert _trainable(student, per_depth_spec) == option + depth * one_adapter


def test_a_shared_adapter_equals_per_depth_adapters_with_the_same_weights(student):
    """One shared adapter serves every application of the layer: the same output as L per-depth
    adapters that all hold its weights, and a different one once a single depth differs."""
    from edgekit.data import TokenizedCorpus

    base, tokenizer = student
    batch = TokenizedCorpus(tokenizer, ["今天天气很好", "股市大涨了"], 24).collate([0, 1])
    embeds = base.word_embeddings(batch["input_ids"])
    torch.manual_seed(0)
    shared = FFNAdapters(1, base.hidden, 16)
    tied = FFNAdapters(base.depth, base.hidden, 16)
    with torch.no_grad():
        shared.lam.fill_(0.7)
        for mine, theirs in zip(tied.stacked(), shared.stacked()):
            mine.copy_(theirs.expand_as(mine))
        one = base.encode(embeds, batch["attention_mask"], shared.stacked())
        assert base.hooks.calls == base.depth
        assert torch.allclose(one, base.encode(embeds, batch["attention_mask"], tied.stacked()), atol=1e-6)
        tied.lam[0] = 0.0
        assert not torch.allclose(one, base.encode(embeds, batch["attention_mask"], tied.stacked()), atol=1e-4)


def test_auto_sharing_is_shared_on_albert_and_per_depth_on_bert(student, tiny_teacher):
    """The default ``tune.adapter_sharing: auto``: one adapter for ALBERT's shared layer, one per layer
    elsewhere."""
    from edgekit.checkpoint import load_encoder, load_tokenizer
    from edgekit.tune.model import Base

    assert _spec(student, "option-adapter", sharing=None).adapter_count == 1 < student[0].depth
    bert = (Base(load_encoder(tiny_teacher)).eval(), load_tokenizer(tiny_teacher))
    assert _spec(bert, "option-adapter", sharing=None).adapter_count == bert[0].depth > 1
