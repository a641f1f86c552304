"""Gradual magnitude pruning library: schedule math, pruner lifecycle, report (M6-Rec section 3.5)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import AlbertForSequenceClassification, AlbertModel

from edgekit.errors import UserError
from edgekit.prune import (MagnitudePruner, cubic_sparsity, magnitude_mask, num_pruned, plot_loss,
                           plot_schedule, sparsity_report, write_report)
from edgekit.student import StudentConfig, albert_config, build_student

TINY = dict(num_layers=2, num_heads=2, hidden_size=32, embedding_size=16, intermediate_size=64)
VOCAB = 100
LAYER = "encoder.albert_layer_groups.0.albert_layers.0."
SELECTED_BASE = [
    "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight", "encoder.embedding_hidden_mapping_in.weight",
    LAYER + "attention.query.weight", LAYER + "attention.key.weight", LAYER + "attention.value.weight",
    LAYER + "attention.dense.weight", LAYER + "ffn.weight", LAYER + "ffn_output.weight",
]


def tiny_classifier(seed: int = 0) -> AlbertForSequenceClassification:
    torch.manual_seed(seed)
    return AlbertForSequenceClassification(albert_config(StudentConfig(**TINY), VOCAB))


def zeros_of(t: torch.Tensor) -> int:
    return int((t == 0).sum())


# -- cubic schedule (Zhu & Gupta eq. 1) --------------------------------------------------------

@pytest.mark.parametrize("step, expected", [
    # s_i=0, s_f=0.8, t0=0, nΔt=100, Δt=10:  s_t = 0.8 · (1 − (1 − t_q/100)³)
    (-5, 0.0),        # before t0: s_i
    (0, 0.0),         # 0.8 · (1 − 1³) = 0
    (10, 0.2168),     # 0.8 · (1 − 0.9³) = 0.8 · (1 − 0.729) = 0.8 · 0.271
    (50, 0.7),        # 0.8 · (1 − 0.5³) = 0.8 · 0.875
    (55, 0.7),        # between updates: t_q = 50
    (90, 0.7992),     # 0.8 · (1 − 0.1³) = 0.8 · 0.999
    (99, 0.7992),     # t_q = 90
    (100, 0.8),       # end: s_f
    (1000, 0.8),      # after: s_f
])
def test_cubic_from_zero(step, expected):
    assert cubic_sparsity(step, 0.0, 0.8, 0, 100, 10) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [
    # s_i=0.2, s_f=0.8, t0=100, nΔt=200, Δt=50:  s_t = 0.8 − 0.6 · (1 − (t_q − 100)/200)³
    (50, 0.2),          # before t0: s_i
    (100, 0.2),         # 0.8 − 0.6 · 1
    (160, 0.546875),    # t_q=150: 0.8 − 0.6 · 0.75³ = 0.8 − 0.6 · 0.421875 = 0.8 − 0.253125
    (200, 0.725),       # 0.8 − 0.6 · 0.5³ = 0.8 − 0.075
    (299, 0.790625),    # t_q=250: 0.8 − 0.6 · 0.25³ = 0.8 − 0.6 · 0.015625 = 0.8 − 0.009375
    (300, 0.8),
])
def test_cubic_from_initial_sparsity(step, expected):
    assert cubic_sparsity(step, 0.2, 0.8, 100, 300, 50) == pytest.approx(expected, abs=1e-12)


def test_cubic_changes_only_every_frequency_steps_and_last_jump_at_end():
    for t in range(100):
        assert cubic_sparsity(t, 0.0, 0.8, 0, 100, 10) == cubic_sparsity(t - t % 10, 0.0, 0.8, 0, 100, 10)
    # nΔt=25 is not a multiple of Δt=10: t=24 → t_q=20: 0.8 · (1 − 0.2³) = 0.8 · 0.992; s_f from t=25
    assert cubic_sparsity(24, 0.0, 0.8, 0, 25, 10) == pytest.approx(0.7936)
    assert cubic_sparsity(25, 0.0, 0.8, 0, 25, 10) == 0.8


@pytest.mark.parametrize("args, message", [
    ((0, 0.0, 1.2, 0, 100, 10), "final_sparsity must be in [0, 1), got 1.2"),
    ((0, 0.0, 1.0, 0, 100, 10), "final_sparsity must be in [0, 1), got 1.0"),
    ((0, -0.1, 0.8, 0, 100, 10), "initial_sparsity must be in [0, 1), got -0.1"),
    ((0, 0.5, 0.3, 0, 100, 10), "final_sparsity 0.3 is below initial_sparsity 0.5"),
    ((0, 0.0, 0.8, 100, 10, 10), "end step 10 is not after begin step 100"),
    ((0, 0.0, 0.8, 100, 100, 10), "end step 100 is not after begin step 100"),
    ((0, 0.0, 0.8, 0, 100, 0), "frequency must be a whole number of steps >= 1, got 0"),
])
def test_cubic_rejects_bad_input(args, message):
    with pytest.raises(UserError) as e:
        cubic_sparsity(*args)
    assert message in str(e.value)


# -- magnitude masks ---------------------------------------------------------------------------

def test_magnitude_mask_by_hand():
    # |w| = .5 .1 .3 .7 0 .2; 50% of 6 → drop the 3 smallest: 0 (idx 4), .1 (idx 1), .2 (idx 5)
    w = torch.tensor([0.5, -0.1, 0.3, -0.7, 0.0, 0.2])
    assert magnitude_mask(w, num_pruned(0.5, 6)).tolist() == [True, False, True, True, False, False]
    # ties: the lower index goes first
    assert magnitude_mask(torch.ones(4), 2).tolist() == [False, False, True, True]
    assert magnitude_mask(w, 0).all()
    assert num_pruned(0.8, 32) == 26  # round(25.6)


# -- pruner on the tiny ALBERT student ---------------------------------------------------------

def test_prepare_selects_every_embedding_and_linear_weight_once():
    model = tiny_classifier()
    pruner = MagnitudePruner()
    pruner.prepare(model)
    # two layers share one set of weights: each tensor is listed once
    expected = ["albert." + n for n in SELECTED_BASE] + ["albert.pooler.weight", "classifier.weight"]
    assert sorted(pruner.tensor_names) == sorted(expected)


def test_include_exclude_patterns():
    pruner = MagnitudePruner(include=[r"attention\."], exclude=r"\.dense\.")
    pruner.prepare(build_student(StudentConfig(**TINY), VOCAB, pooler=True, seed=0))
    assert sorted(pruner.tensor_names) == sorted(LAYER + f"attention.{x}.weight" for x in ("query", "key", "value"))


def test_schedule_driven_training_reaches_target_and_zeros_survive_adamw():
    model = tiny_classifier()
    pruner = MagnitudePruner()
    pruner.prepare(model)
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(1, VOCAB, (4, 12), generator=g), torch.tensor([0, 1, 0, 1])
    moved_before_reapply = 0
    previous = pruner.masks
    for step in range(40):  # ramp over 0..30, then 10 steps at the final sparsity
        s = cubic_sparsity(step, 0.0, 0.8, 0, 30, 5)
        if s != pruner.sparsity:
            pruner.update_masks(s)
            for name, m in pruner.masks.items():  # a pruned weight is never revived
                assert not (m & ~previous[name]).any()
            previous = pruner.masks
        model(input_ids=ids, labels=labels).loss.backward()
        pruner.mask_gradients()
        for name, m in pruner.masks.items():
            assert zeros_of(params[name].grad[~m]) == int((~m).sum())
        opt.step()
        moved_before_reapply += sum(int((params[n][~m] != 0).sum()) for n, m in pruner.masks.items())
        pruner.apply_masks()
        opt.zero_grad()
        for name, m in pruner.masks.items():
            assert zeros_of(params[name][~m]) == int((~m).sum())
    # Adam's momentum does move pruned weights; apply_masks is what keeps them at zero
    assert moved_before_reapply > 0
    assert pruner.sparsity == 0.8
    for name in pruner.tensor_names:
        w = params[name]
        assert zeros_of(w) == round(0.8 * w.numel()), name
        # ±0.5%, except where one weight is worth more: token_type_embeddings has 2·16 = 32
        # entries, so 26/32 = 0.8125 is the closest count to 80%
        assert abs(zeros_of(w) / w.numel() - 0.8) <= max(0.005, 0.5 / w.numel()), name


def test_squash_then_save_and_load_keeps_zeros(tmp_path):
    model = build_student(StudentConfig(**TINY), VOCAB, pooler=True, seed=0)
    keys = set(model.state_dict())
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.update_masks(0.8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids = torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        pruner.mask_gradients()
        opt.step()
        pruner.apply_masks()
        opt.zero_grad()
    names = pruner.tensor_names
    pruner.squash_mask()
    assert pruner.tensor_names == [] and pruner.sparsity is None
    assert set(model.state_dict()) == keys  # a plain model: no masks, no parametrizations
    model.save_pretrained(tmp_path)
    loaded = AlbertModel.from_pretrained(tmp_path)
    before, after = dict(model.named_parameters()), dict(loaded.named_parameters())
    for name in names:
        assert torch.equal(after[name] == 0, before[name] == 0), name
        assert zeros_of(after[name]) == round(0.8 * after[name].numel()), name


def test_state_dict_resumes_masks():
    model = build_student(StudentConfig(**TINY), VOCAB, pooler=True, seed=0)
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.update_masks(0.5)
    state = pruner.state_dict()

    fresh = build_student(StudentConfig(**TINY), VOCAB, pooler=True, seed=3)
    resumed = MagnitudePruner()
    resumed.prepare(fresh)
    resumed.load_state_dict(state)
    assert resumed.sparsity == 0.5
    for name, m in pruner.masks.items():
        assert torch.equal(resumed.masks[name], m)
        assert zeros_of(dict(fresh.named_parameters())[name][~m]) == int((~m).sum())

    other = MagnitudePruner(exclude="pooler")
    other.prepare(build_student(StudentConfig(**TINY), VOCAB, pooler=True, seed=0))
    with pytest.raises(UserError, match="saved pruning masks do not match the selected weights"):
        other.load_state_dict(state)


def test_global_scope_reaches_overall_target():
    model = tiny_classifier()
    pruner = MagnitudePruner(scope="global")
    pruner.prepare(model)
    pruner.update_masks(0.8)
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in pruner.tensor_names)
    zeros = sum(zeros_of(params[n]) for n in pruner.tensor_names)
    assert zeros == round(0.8 * total)
    # one threshold over all tensors, not round(0.8·numel) in each: the tensors' sparsities differ
    per_tensor = {n: zeros_of(params[n]) / params[n].numel() for n in pruner.tensor_names}
    assert max(per_tensor.values()) - min(per_tensor.values()) > 0.01


class _NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3)
        self.norm = nn.LayerNorm(4)


@pytest.mark.parametrize("make, message", [
    (lambda: MagnitudePruner(include="nothing_like_this"), "include pattern 'nothing_like_this' matches no"),
    (lambda: MagnitudePruner(exclude=["pooler", "no_such"]), "exclude pattern 'no_such' matches no"),
    (lambda: MagnitudePruner(include="attention", exclude="attention"), "leave no weight to prune"),
    (lambda: MagnitudePruner(include="("), "include pattern '(' is not a valid regular expression"),
    (lambda: MagnitudePruner(scope="row"), "pruning scope must be one of layer, global, got 'row'"),
])
def test_pruner_rejects_bad_configuration(make, message):
    with pytest.raises(UserError) as e:
        make().prepare(build_student(StudentConfig(**TINY), VOCAB, pooler=True, seed=0))
    assert message in str(e.value)


def test_pruner_rejects_model_without_linear_and_bad_sparsity():
    with pytest.raises(UserError, match="_NoLinear has no nn.Linear or nn.Embedding weights to prune"):
        MagnitudePruner().prepare(_NoLinear())
    pruner = MagnitudePruner()
    pruner.prepare(build_student(StudentConfig(**TINY), VOCAB, pooler=True, seed=0))
    with pytest.raises(UserError, match=r"sparsity must be in \[0, 1\), got 1.2"):
        pruner.update_masks(1.2)
    with pytest.raises(UserError, match=r"sparsity must be in \[0, 1\), got -0.1"):
        pruner.update_masks(-0.1)


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_tied_weights_are_pruned_and_counted_once():
    model = _Tied()
    pruner = MagnitudePruner()
    pruner.prepare(model)
    assert pruner.tensor_names == ["emb.weight"]
    pruner.update_masks(0.5)
    totals = sparsity_report(model)["totals"]
    assert (totals["parameters"], totals["nonzeros"]) == (40, 20)


# -- report ------------------------------------------------------------------------------------

def test_report_and_plots(tmp_path):
    model = build_student(StudentConfig(**TINY), VOCAB, pooler=True, seed=0)
    dense = sparsity_report(model)["totals"]
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.update_masks(0.8)
    report = sparsity_report(model)
    totals = report["totals"]
    assert totals["parameters"] == sum(p.numel() for p in model.parameters())  # shared layer once
    assert totals["nonzeros"] == sum(t["nonzeros"] for t in report["tensors"])
    assert totals["dense_fp32_bytes"] == 4 * totals["parameters"]
    assert totals["gzip_fp32_bytes"] < 0.5 * dense["gzip_fp32_bytes"]
    query = next(t for t in report["tensors"] if t["name"] == LAYER + "attention.query.weight")
    # 32·32 = 1024 entries, round(0.8 · 1024) = 819 zeros, 205 kept
    assert query == {"name": query["name"], "shape": [32, 32], "numel": 1024, "nonzeros": 205,
                     "sparsity": pytest.approx(819 / 1024)}

    path = write_report(report, tmp_path / "out" / "sparsity.json")
    assert json.loads(path.read_text())["totals"] == totals
    steps = list(range(0, 120))
    png = plot_schedule(steps, [cubic_sparsity(t, 0.0, 0.8, 0, 100, 10) for t in steps], tmp_path / "s.png")
    png2 = plot_loss(steps, [1.0 / (1 + t) for t in steps], tmp_path / "l.png")
    for p in (png, png2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the paper's shape -------------------------------------------------------------------------

def test_paper_shape_student_at_80_percent():
    # build_student leaves out the pooler (distillation never trains it; task heads add their own).
    model = build_student(StudentConfig(), 21128, seed=0)
    # Selected (embedding + linear weights), counted once:
    #   word 21128·128 = 2,704,384   position 512·128 = 65,536   token type 2·128 = 256
    #   E→H projection 128·768 = 98,304   Q, K, V, O 4 · 768·768 = 2,359,296
    #   FFN in 768·3072 = 2,359,296   FFN out 2,359,296                        → 9,946,368
    # Left dense (LayerNorm and biases): 2·128 + 768 + 3·768 + 768 + 2·(2·768) + 3072 + 768 = 11,008
    pruner = MagnitudePruner()
    pruner.prepare(model)
    params = dict(model.named_parameters())
    selected = sum(params[n].numel() for n in pruner.tensor_names)
    assert selected == 9_946_368
    assert sum(p.numel() for p in params.values()) == 9_957_376

    pruner.update_masks(0.8)
    # kept = numel − round(0.8·numel): word 540,877; position 13,107; token type 51;
    # projection 19,661; Q, K, V, O 4 · 117,965; FFN in/out 2 · 471,859 → 1,989,274
    kept = sum(int(torch.count_nonzero(params[n])) for n in pruner.tensor_names)
    assert kept == 1_989_274
    # Counting every LayerNorm/bias entry as non-zero (true after training): 2,000,282 <= 2.1M.
    assert kept + 11_008 == 2_000_282 <= 2_100_000
    for n in pruner.tensor_names:
        assert abs(1 - int(torch.count_nonzero(params[n])) / params[n].numel() - 0.8) <= 0.005, n


def test_fine_tuning_a_pruned_model_keeps_its_zeros():
    from edgekit.prune import fixed_mask_callback

    model = tiny_classifier()
    assert fixed_mask_callback(model) is None  # dense: nothing to keep
    pruner = MagnitudePruner(exclude=[r"pooler", r"classifier"])
    pruner.prepare(model)
    pruner.update_masks(0.8)
    pruner.squash_mask()
    keeper = fixed_mask_callback(model)
    assert keeper is not None and keeper.pruner.sparsity == pytest.approx(0.8, abs=0.005)
    assert not any("pooler" in n or "classifier" in n for n in keeper.pruner.tensor_names)
    params = dict(model.named_parameters())
    zeros_before = {n: params[n] == 0 for n in keeper.pruner.tensor_names}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids, labels = torch.randint(1, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1])
    for step in range(1, 6):
        model(input_ids=ids, labels=labels).loss.backward()
        keeper.before_optimizer_step(step)
        opt.step()
        keeper.after_optimizer_step(step)
        opt.zero_grad()
    for name, was_zero in zeros_before.items():
        assert bool((params[name][was_zero] == 0).all()), name
        assert bool((params[name][~was_zero] != 0).any()), name  # the kept weights did train
    assert float((params["albert.pooler.weight"] == 0).float().mean()) < 0.01
