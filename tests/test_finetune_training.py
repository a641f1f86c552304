"""Issue 12's fine-tuning features: epoch defaults, length-bucketed batches, task distillation with
cached teacher logits, the learning-rate sweep and task-level pruning (tiny models, seconds each)."""

import math
import random

import pytest
import torch

from conftest import clue_sentences, make_tiny_albert
from edgekit.errors import UserError

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: threads only contend


# --- schedule: epochs, steps, learning rate, length -------------------------------------------

def test_steps_for_epochs_and_defaults():
    from edgekit.finetune.schedule import default_lr, steps_for_epochs, task_epochs, task_max_length

    assert steps_for_epochs(1000, 3, 32) == 93                 # ⌊1000/32⌋ = 31 batches × 3
    assert steps_for_epochs(1000, 3, 16, world_size=2, grad_accum=2) == 47   # ⌈3·31/2⌉
    assert steps_for_epochs(10, 1, 32) == 1                    # never zero steps
    assert (task_max_length("tnews"), task_epochs("tnews")) == (128, 3)
    assert (task_max_length("csl"), task_epochs("csl")) == (256, 5)
    assert (task_max_length("jsonl"), task_epochs("jsonl")) == (128, 3)
    assert default_lr(3_000_000) == 1e-4 and default_lr(85_000_000) == 3e-5
    with pytest.raises(UserError, match=r"train.epochs must be positive, got 0"):
        steps_for_epochs(1000, 0, 32)


def test_config_defaults_follow_the_task():
    from edgekit.finetune import load_finetune_config

    cfg = load_finetune_config(None, {"task": {"name": "csl"}})
    assert cfg.task.max_length == 256 and cfg.train.max_steps is None and cfg.train.lr is None
    assert cfg.train.warmup_ratio == 0.1
    assert load_finetune_config(None, {"task": {"name": "csl", "max_length": 64}}).task.max_length == 64
    with pytest.raises(UserError, match=r"train.epochs must be positive, got -1"):
        load_finetune_config(None, {"train": {"epochs": -1}}).train.validate()
    with pytest.raises(UserError, match=r"train.max_steps must be at least 1, got 0"):
        load_finetune_config(None, {"train": {"max_steps": 0}}).train.validate()


def test_prune_recovery_steps():
    from edgekit.prune.config import PruneSection, schedule_end, validate_prune_section

    assert schedule_end(PruneSection(), 100) == 75                       # a quarter recovers by default
    assert schedule_end(PruneSection(recovery_steps=20), 100) == 80
    assert schedule_end(PruneSection(end_step=50), 100) == 50
    with pytest.raises(UserError, match=r"give only one of them"):
        schedule_end(PruneSection(end_step=50, recovery_steps=20), 100)
    with pytest.raises(UserError, match=r"prune.recovery_steps must be between 0 and train.max_steps − 1 \(99\)"):
        validate_prune_section(PruneSection(recovery_steps=100), 100)


# --- length-bucketed batches ------------------------------------------------------------------

def test_bucketed_batches_cover_the_epoch_and_save_padding():
    from edgekit.finetune.batching import LengthBucketedBatches, bucketed_order, padded_tokens

    assert padded_tokens([[0, 1], [2]], [3, 5, 4]) == 2 * 5 + 1 * 4
    lengths = [len(s) + 2 for s in clue_sentences(2000)]   # TNEWS titles, characters ≈ tokens
    batches = bucketed_order(lengths, 32, 50, seed=1)
    flat = [i for b in batches for i in b]
    assert len(batches) == 2000 // 32 and all(len(b) == 32 for b in batches) and len(set(flat)) == len(flat)
    rng = random.Random(1)
    order = list(range(2000))
    rng.shuffle(order)
    random_batches = [order[i:i + 32] for i in range(0, 2000 - 31, 32)]
    ratio = padded_tokens(batches, lengths) / padded_tokens(random_batches, lengths)
    assert ratio < 0.75, ratio                             # measured 0.6x on TNEWS
    assert padded_tokens(batches, lengths) < 0.5 * len(flat) * 128   # vs padding to max_length 128

    a = LengthBucketedBatches(lengths[:200], 16, seed=3, pool_batches=4)
    seen = [a.next() for _ in range(15)]                   # into the second epoch (12 batches each)
    b = LengthBucketedBatches(lengths[:200], 16, seed=3, pool_batches=4)
    for _ in range(10):
        b.next()
    state = b.state_dict()
    c = LengthBucketedBatches(lengths[:200], 16, seed=3, pool_batches=4)
    c.load_state_dict(state)
    assert [c.next() for _ in range(5)] == seen[10:15]     # resumed mid-run: the same batches
    assert seen[12] != seen[0]                             # a new epoch, a new order


# --- task distillation: the loss ------------------------------------------------------------

def test_soft_label_loss_hand_computed():
    from edgekit.finetune.task_distill import IGNORE, soft_label_kl, soft_label_loss

    z_s = torch.tensor([[math.log(3.0), 0.0]])
    z_t = torch.zeros(1, 2)
    assert soft_label_kl(z_s, z_t, 1.0).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)   # 0.143841
    y = torch.tensor([0])
    assert soft_label_loss(z_s, z_t, y, 0.5, 1.0).item() == pytest.approx(0.215762, abs=1e-6)
    assert soft_label_loss(z_s, z_t, y, 0.0, 1.0).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    # T = 2: KL of the softened distributions, times T² = 4; unlabelled rows carry no CE
    kl2 = soft_label_kl(z_s, z_t, 2.0).item()
    p = torch.softmax(z_s / 2, -1)[0]
    assert kl2 == pytest.approx(0.5 * math.log(0.5 / p[0].item()) + 0.5 * math.log(0.5 / p[1].item()), abs=1e-6)
    assert soft_label_loss(z_s, z_t, torch.tensor([IGNORE]), 0.5, 2.0).item() == pytest.approx(0.5 * 4 * kl2, abs=1e-6)


# --- end to end on a tiny student -----------------------------------------------------------

@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    path = tmp_path_factory.mktemp("unlabeled") / "unlabeled.txt"
    path.write_text("看电影好极了\n吃饭糟透了\n买东西好极了\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_albert(tmp_path_factory):
    return make_tiny_albert(tmp_path_factory.mktemp("albert") / "student")


def _cfg(model, data, **over):
    from edgekit.config import merge
    from edgekit.finetune import load_finetune_config

    base = {"model": str(model),
            "task": {"name": "jsonl", "data_dir": str(data), "text_field": "review", "label_field": "y",
                     "max_length": 32},
            "finetune": {"eval_every": 12, "bucket_batches": 4},
            "train": {"max_steps": 12, "batch_size": 16, "lr": 3e-3, "save_every": 100, "log_every": 6}}
    return load_finetune_config(None, merge(base, over))


@pytest.fixture(scope="module")
def teacher_run(tiny_albert, separable, tmp_path_factory):
    from edgekit.finetune import finetune

    out = tmp_path_factory.mktemp("teacher") / "ft"
    finetune(_cfg(tiny_albert, separable), out)
    return out


def test_epochs_give_the_steps_and_lr_default(tiny_albert, separable, tmp_path):
    from edgekit.finetune import finetune

    result = finetune(_cfg(tiny_albert, separable, train={"max_steps": None, "lr": None, "epochs": 1}), tmp_path / "ft")
    s = result["schedule"]
    assert result["steps"] == 12 == s["max_steps"] and s["epochs"] == 1      # ⌊200/16⌋ batches
    assert s["lr"] == 1e-4
    assert "non-embedding parameters" in s["source"]["lr"] and s["source"]["max_steps"].startswith("train.epochs")


def test_task_distillation_caches_teacher_logits(tiny_albert, separable, unlabeled, teacher_run, tmp_path,
                                                 monkeypatch):
    import edgekit.finetune.logit_cache as lc
    from edgekit.finetune import finetune

    calls = []
    real = lc.compute_teacher_logits
    monkeypatch.setattr(lc, "compute_teacher_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    over = {"finetune": {"teacher_run": str(teacher_run), "logit_cache": str(tmp_path / "cache"),
                         "unlabeled": [str(unlabeled)], "alpha": 0.7, "temperature": 2.0}}
    first = finetune(_cfg(tiny_albert, separable, **over), tmp_path / "s1")
    assert calls == [1] and first["task_distill"]["cached"] is False
    assert first["train_examples"] == 203 and first["task_distill"]["unlabeled_examples"] == 3
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    second = finetune(_cfg(tiny_albert, separable, **over), tmp_path / "s2")
    assert calls == [1] and second["task_distill"]["cached"] is True     # no teacher forward the second time
    assert 0.0 <= second["dev_accuracy"] <= 1.0

    from safetensors.torch import load_file

    logits = load_file(str(next((tmp_path / "cache").glob("*.safetensors"))))["logits"]
    assert logits.shape == (203, 2) and logits.dtype == torch.float32


def test_task_distillation_of_a_late_interaction_student(tiny_albert, separable, unlabeled, teacher_run, tmp_path,
                                                         monkeypatch):
    """The teacher reads each example's whole text (cached as for a plain student: the same file), the
    late-interaction student its segments, and with alpha 1 learns the soft labels alone: from a teacher
    at ≥ 95% dev it learns the task; from the 12-step fixture teacher, which predicts one class, it
    learns that class."""
    import edgekit.finetune.logit_cache as lc
    from edgekit.finetune import finetune

    calls = []
    real = lc.compute_teacher_logits
    monkeypatch.setattr(lc, "compute_teacher_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "cache"
    strong = tmp_path / "teacher"
    assert finetune(_cfg(tiny_albert, separable, train={"max_steps": 60}), strong)["dev_accuracy"] >= 0.95
    plain = finetune(_cfg(tiny_albert, separable, finetune={"teacher_run": str(strong), "logit_cache": str(cache)}),
                     tmp_path / "plain")
    late_cfg = {"late_interaction": {"late_layers": 1}, "train": {"max_steps": 60}}
    late = finetune(_cfg(tiny_albert, separable, **late_cfg, finetune={
        "teacher_run": str(strong), "logit_cache": str(cache), "alpha": 1.0}), tmp_path / "late")
    assert calls == [1] and plain["task_distill"]["cached"] is False
    assert late["task_distill"]["cached"] is True and late["task_distill"]["file"] == plain["task_distill"]["file"]
    assert late["task_distill"]["labelled_examples"] == 200 and late["task_distill"]["teacher_train_accuracy"] >= 0.95
    assert late["late_interaction"] and late["dev_accuracy"] >= 0.9, late["history"]

    weak = finetune(_cfg(tiny_albert, separable, **late_cfg, finetune={
        "teacher_run": str(teacher_run), "logit_cache": str(cache), "alpha": 1.0}), tmp_path / "weak")
    assert weak["task_distill"]["teacher_train_accuracy"] == 0.5 and weak["dev_accuracy"] == 0.5, weak["history"]

    # unlabelled lines join a late-interaction student's training set: one segment per line of a plain
    # file; labelled 16 + unlabelled 200 read as the task reads its examples, soft labels only (alpha 1)
    small = finetune(_cfg(tiny_albert, separable, **late_cfg, finetune={
        "teacher_run": str(strong), "logit_cache": str(cache), "unlabeled": [str(unlabeled)]}), tmp_path / "late2")
    assert small["train_examples"] == 203 and small["task_distill"]["unlabeled_examples"] == 3
    wide = finetune(_cfg(tiny_albert, separable, **late_cfg, task={"max_train_examples": 16}, finetune={
        "teacher_run": str(strong), "logit_cache": str(cache), "alpha": 1.0, "unlabeled_text_field": "task",
        "unlabeled": [str(separable / "train.jsonl")]}), tmp_path / "late3")
    assert wide["train_examples"] == 216 and wide["task_distill"]["unlabeled_examples"] == 200
    assert wide["task_distill"]["labelled_examples"] == 16 and wide["dev_accuracy"] >= 0.9, wide["history"]


def test_unlabeled_segments_are_the_unlabeled_texts_as_the_task_segments_them(tmp_path):
    """CSL lines without labels: the teacher's text as the task builds it, the student's segments as
    CSL's segmenter cuts them (each keyword, then the abstract), in the same order; a plain file: one
    segment per line."""
    import json
    from types import SimpleNamespace

    from edgekit.finetune.task_distill import unlabeled_segments
    from edgekit.tasks import load_task

    lines = [{"id": 1, "abst": "台风路径预报的修正方法", "keyword": ["台风", "路径"]},
             {"id": 2, "abst": "水稻产量的遥感估计", "keyword": ["遥感"]}]
    f = tmp_path / "test.json"
    f.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    task = SimpleNamespace(name="csl", text_field=None, text_pair_field=None)
    ft = SimpleNamespace(unlabeled=[str(f)], unlabeled_text_field="task", max_unlabeled=None)
    texts, segments = unlabeled_segments(ft, task)
    assert segments == [["台风", "路径", "台风路径预报的修正方法"], ["遥感", "水稻产量的遥感估计"]]
    labelled = tmp_path / "csl"
    labelled.mkdir()
    for split in ("train", "dev"):
        (labelled / f"{split}.json").write_text("".join(json.dumps({**x, "label": "1"}, ensure_ascii=False) + "\n"
                                                        for x in lines), encoding="utf-8")
    assert texts == load_task("csl", labelled).train.texts  # what the teacher was fine-tuned on
    ft.max_unlabeled = 1
    assert unlabeled_segments(ft, task) == (texts[:1], segments[:1])
    plain = tmp_path / "plain.txt"
    plain.write_text("甲乙\n丙\n", encoding="utf-8")
    ft = SimpleNamespace(unlabeled=[str(plain)], unlabeled_text_field="sentence,text,abst", max_unlabeled=None)
    assert unlabeled_segments(ft, SimpleNamespace(name="tnews")) == (["甲乙", "丙"], [["甲乙"], ["丙"]])


def test_task_distillation_refuses_a_teacher_of_other_labels(tiny_albert, separable, teacher_run, tmp_path):
    from edgekit.finetune import finetune

    other = tmp_path / "other"
    other.mkdir()
    for name in ("train.jsonl", "dev.jsonl"):
        text = (separable / name).read_text(encoding="utf-8").replace('"pos"', '"good"')
        (other / name).write_text(text, encoding="utf-8")
    cfg = _cfg(tiny_albert, other, finetune={"teacher_run": str(teacher_run), "logit_cache": str(tmp_path / "c")})
    with pytest.raises(UserError, match=r"was fine-tuned on labels \(neg, pos\) that are not this task's \(good, neg\)"):
        finetune(cfg, tmp_path / "s")
    with pytest.raises(UserError, match=r"finetune.alpha must be between 0"):
        finetune(_cfg(tiny_albert, separable, finetune={"teacher_run": str(teacher_run), "alpha": 1.5}), tmp_path / "t")


def test_lr_sweep_keeps_the_best_and_does_not_rerun(tiny_albert, separable, tmp_path, monkeypatch):
    from edgekit.finetune import finetune

    cfg = _cfg(tiny_albert, separable, finetune={"lr": [1e-5, 3e-3]})
    result = finetune(cfg, tmp_path / "sweep")
    rows = result["sweep"]
    assert [r["lr"] for r in rows] == [1e-5, 3e-3]
    assert result["lr"] == max(rows, key=lambda r: r["dev_accuracy"])["lr"]
    assert result["dev_accuracy"] == max(r["dev_accuracy"] for r in rows)
    assert (tmp_path / "sweep" / "model" / "config.json").is_file()
    assert (tmp_path / "sweep" / "lr-0.003" / "results.json").is_file()

    import edgekit.finetune.stage as stage

    ran = []
    monkeypatch.setattr(stage, "Trainer", lambda *a, **k: ran.append(1) or pytest.fail("a finished lr was rerun"))
    again = finetune(_cfg(tiny_albert, separable, finetune={"lr": [1e-5, 3e-3]}), tmp_path / "sweep", resume=True)
    assert ran == [] and again["lr"] == result["lr"]
    with pytest.raises(UserError, match=r"lists a learning rate twice"):
        finetune(_cfg(tiny_albert, separable, finetune={"lr": [1e-3, 1e-3]}), tmp_path / "dup")


def test_task_pruning_reaches_the_target_and_keeps_a_model_after_it(tiny_albert, separable, tmp_path):
    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.finetune import finetune

    over = {"finetune": {"eval_every": 4, "prune": {"sparsity": 0.6, "frequency": 2, "recovery_steps": 4}}}
    result = finetune(_cfg(tiny_albert, separable, **over), tmp_path / "p")
    assert result["task_prune"] == {"sparsity": 0.6, "end_step": 8, "recovery_steps": 4, "scope": "layer"}
    assert result["best_step"] >= 8 and min(h["step"] for h in result["history"]) < 8  # earlier ones not kept
    model = EarlyExitClassifier.from_pretrained(tmp_path / "p" / "model")
    for name, p in model.named_parameters():
        if p.dim() == 2 and "classifier" not in name and "pooler" not in name:
            assert (p == 0).float().mean().item() == pytest.approx(0.6, abs=0.01), name
    assert (model.model.classifier.weight != 0).all()       # the task head stays dense
