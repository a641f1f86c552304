"""The ``edgekit finetune`` run: full fine-tuning on a classification task, all exits trained.

Students (ALBERT) are fine-tuned as ``EarlyExitClassifier``s with the accumulated early-exit loss
Σ_k 2k/(L(L+1))·CE_k (M6-Rec section 3.5: "the accumulated loss is also used for downstream
tasks"); other encoders (a teacher as the upper reference) with the usual last-layer loss.
Evaluation every ``eval_every`` steps and at the end, accuracy per exit; the best checkpoint (by the
last exit's dev accuracy) is kept and becomes ``OUT/model``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

from edgekit.checkpoint import check_model_dir, load_config_of, load_tokenizer, read_meta, save_model_dir
from edgekit.config import to_dict
from edgekit.data import TokenizedCorpus
from edgekit.errors import UserError
from edgekit.finetune.config import FinetuneConfig
from edgekit.finetune.pooling import resolve_pooling
from edgekit.io import RunDir, check_run_dir, read_json
from edgekit.tasks import Task, load_task
from edgekit.train import Trainer, init_distributed


class ClassifierModule(nn.Module):
    """The training module: forward(batch) -> (loss, metrics). Wraps an early-exit student or any HF classifier."""

    def __init__(self, model: nn.Module, early_exit: bool):
        super().__init__()
        self.model = model
        self.early_exit = early_exit
        self.is_early_exit = hasattr(model, "predict_dynamic")
        self.is_late_interaction = hasattr(model, "forward_one_pass")

    def forward(self, batch):
        if self.is_late_interaction:  # segments packed in one sequence (Figure 4); the last layer's loss
            loss = nn.functional.cross_entropy(self.model.forward_one_pass(batch), batch["labels"])
            return loss, {"loss": loss.detach()}
        kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        if self.is_early_exit:
            out = self.model(**kw, labels=batch["labels"], early_exit=self.early_exit)
            return out.loss, {"loss": out.loss.detach(), "last_exit_ce": out.exit_losses[-1].detach()}
        out = self.model(**kw, labels=batch["labels"])
        return out.loss, {"loss": out.loss.detach()}

    @torch.no_grad()
    def exit_logits(self, batch) -> torch.Tensor:
        """(K, B, C): logits of every exit (students) or (1, B, C)."""
        if self.is_late_interaction:
            return self.model.forward_one_pass(batch)[None]
        kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        if self.is_early_exit:
            return self.model(**kw).logits
        return self.model(**kw).logits[None]


def evaluate(module: ClassifierModule, data: TokenizedCorpus, batch_size: int = 64, device="cpu") -> dict:
    """Accuracy of every exit on a labelled set."""
    was = module.training
    module.eval()
    correct = None
    ids = getattr(data, "ids", None)
    # similar lengths per batch: padding is wasted compute, and accuracy does not depend on the order
    order = sorted(range(len(data)), key=lambda i: len(ids[i])) if isinstance(ids, list) else list(range(len(data)))
    for start in range(0, len(data), batch_size):
        batch = {k: v.to(device) for k, v in data.collate(order[start:start + batch_size]).items()}
        pred = module.exit_logits(batch).argmax(-1)  # (K, B)
        hits = (pred == batch["labels"][None]).sum(-1)
        correct = hits if correct is None else correct + hits
    module.train(was)
    acc = (correct.float() / len(data)).tolist()
    return {"accuracy": acc[-1], "accuracy_per_exit": [round(a, 6) for a in acc], "examples": len(data)}


class EvalCallback:
    """Evaluate every ``every`` steps; keep the best checkpoint in ``RUN/best``."""

    def __init__(self, module, dev: TokenizedCorpus, every: int, run: RunDir, save, device, is_main: bool = True):
        self.module, self.dev, self.every, self.run, self.save, self.device = module, dev, every, run, save, device
        self.is_main = is_main
        self.best = -1.0
        self.best_step = 0
        self.min_step = 0  # earlier evaluations are not candidates (task pruning: before the target sparsity)
        self.history: list[dict] = []

    def after_optimizer_step(self, step: int) -> None:
        if step % self.every == 0:
            self.evaluate(step)

    def evaluate(self, step: int) -> dict:
        result = evaluate(self.module, self.dev, device=self.device)
        result["step"] = step
        self.history.append(result)
        if self.is_main:
            self.run.log_metrics({"step": step, "eval_accuracy": result["accuracy"],
                                  "eval_accuracy_per_exit": result["accuracy_per_exit"]})
        if result["accuracy"] > self.best and step >= self.min_step:
            self.best, self.best_step = result["accuracy"], step
            if self.is_main:
                self.save(self.module, self.run.path / "best")
        return result

    def evaluate_last(self, step: int) -> None:
        """Evaluate the final ``step`` too, unless ``every`` already did: the best model is chosen
        among all evaluations, and the last steps' training must count."""
        if not self.history or self.history[-1]["step"] != step:
            self.evaluate(step)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.history = state["best"], state["best_step"], state["history"]


def build_classifier(model_dir, task: Task, pooling: str = "auto"):
    """An early-exit classifier for ALBERT students, ``AutoModelForSequenceClassification`` otherwise,
    its head pooling by ``pooling`` (``cls``, ``mean`` or ``auto``: ``edgekit.finetune.pooling``)."""
    from transformers import AutoModelForSequenceClassification

    from edgekit.finetune.pooling import with_pooling

    pooling = resolve_pooling(pooling, model_dir)

    config = load_config_of(model_dir)
    id2label = {i: name for i, name in enumerate(task.labels)}
    label2id = {name: i for i, name in id2label.items()}
    if config.model_type == "albert":
        from edgekit.early_exit import EarlyExitClassifier
        from edgekit.student import load_student

        archs = getattr(config, "architectures", None) or []
        if "AlbertForSequenceClassification" in archs and config.num_labels == task.num_labels:
            clf = EarlyExitClassifier.from_pretrained(model_dir)
        else:
            clf = EarlyExitClassifier.from_student(load_student(model_dir), task.num_labels)
        clf.model.config.id2label, clf.model.config.label2id = id2label, label2id
        return with_pooling(clf, pooling)
    return with_pooling(AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=task.num_labels, id2label=id2label, label2id=label2id), pooling)


def freeze_word_embeddings(model: nn.Module) -> int:
    """Stop training the token embedding table(s); returns how many parameters were frozen."""
    frozen = 0
    for name, p in model.named_parameters():
        if name.endswith("word_embeddings.weight"):
            p.requires_grad_(False)
            frozen += p.numel()
    if not frozen:
        raise UserError("finetune.freeze_embeddings is set but the model has no word_embeddings table to freeze.")
    return frozen


def finetune(cfg: FinetuneConfig, out, resume: bool = False, stop_after_step: int | None = None,
             command: str | None = None, overwrite: bool = False) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.task``; the best model is written to ``OUT/model``."""
    out = Path(out)
    if cfg.model is None:
        raise UserError("no model given; pass --model DIR (a student from `edgekit distill`/`prune`, or any encoder).")
    cfg.train.validate()
    if cfg.finetune.lr:  # a learning-rate sweep: one run per rate, the best on dev kept
        from edgekit.finetune.sweep import run_sweep

        return run_sweep(cfg, out, finetune, resume=resume, stop_after_step=stop_after_step, command=command,
                         overwrite=overwrite)
    if cfg.finetune.eval_every < 1:
        raise UserError(f"finetune.eval_every must be at least 1, got {cfg.finetune.eval_every}.")
    model_dir = check_model_dir(cfg.model, builtin=True)  # 'e5-small' too, as `tune --model` accepts it
    check_run_dir(out, resume, overwrite, "finetune-run")
    t = cfg.task
    # never the test split: the best checkpoint is chosen on dev, and test stays unseen until eval
    late = cfg.late_interaction
    task = load_task(t.name, t.data_dir, t.text_field, t.text_pair_field, t.label_field, provenance=t.provenance,
                     segmented=late.late_layers is not None)
    dist = init_distributed()
    torch.manual_seed(cfg.train.seed)
    tokenizer = load_tokenizer(model_dir)
    pooling = resolve_pooling(cfg.finetune.pooling, model_dir)
    clf = build_classifier(model_dir, task, pooling)
    if late.late_layers is not None:
        from edgekit.late_interaction import LateInteractionClassifier

        clf = LateInteractionClassifier(clf, late.late_layers, late.max_segments, late.max_segment_tokens)
    early = cfg.finetune.early_exit and hasattr(clf, "predict_dynamic")
    if cfg.finetune.freeze_embeddings:
        freeze_word_embeddings(clf)
    module = ClassifierModule(clf, early)

    def subset(split, limit):
        n = len(split) if limit is None else min(limit, len(split))
        if late.late_layers is not None:
            from edgekit.late_interaction.data import SegmentCorpus

            return SegmentCorpus(tokenizer, split.segments[:n], late.max_segments, late.max_segment_tokens,
                                 labels=split.labels[:n])
        return TokenizedCorpus(tokenizer, split.texts[:n], t.max_length, labels=split.labels[:n])

    train_data, dev_data = subset(task.train, t.max_train_examples), subset(task.dev, t.max_eval_examples)
    distilled = None
    if cfg.finetune.teacher_run:  # task-level distillation: the teacher's soft labels (finetune/task_distill.py)
        from edgekit.finetune.task_distill import attach_teacher, attach_teacher_to_segments, soft_label_module

        n = len(train_data)
        if late.late_layers is not None:  # the teacher reads each example as the task's whole text, as it was trained
            from edgekit.finetune.task_distill import IGNORE, unlabeled_segments
            from edgekit.late_interaction.data import SegmentCorpus

            whole = load_task(t.name, t.data_dir, t.text_field, t.text_pair_field, t.label_field).train
            if whole.labels[:n] != task.train.labels[:n]:  # the same file read twice: the same examples in order
                raise ValueError("the segmented and whole-text reads of the train split disagree")
            extra, extra_segments = unlabeled_segments(cfg.finetune, t, pair_task=whole.pairs is not None)
            if extra:  # unlabelled examples (label IGNORE) learn from the soft labels only
                train_data = SegmentCorpus(tokenizer, task.train.segments[:n] + extra_segments, late.max_segments,
                                           late.max_segment_tokens,
                                           labels=task.train.labels[:n] + [IGNORE] * len(extra))
            distilled = attach_teacher_to_segments(cfg.finetune, task.labels, whole.texts[:n], task.train.labels[:n],
                                                   train_data, t.max_length, extra)
        else:
            train_data, distilled = attach_teacher(cfg.finetune, task.labels, task.train.texts[:n],
                                                   task.train.labels[:n], tokenizer, t.max_length, t,
                                                   pair_task=task.train.pairs is not None)
        module = soft_label_module(clf, early, cfg.finetune.alpha, cfg.finetune.temperature)
    from edgekit.finetune.batching import make_batches
    from edgekit.finetune.schedule import describe_schedule, resolve_schedule

    schedule = resolve_schedule(cfg, len(train_data), clf, dist.world_size)
    if dist.is_main:
        print(describe_schedule(task.name, schedule), flush=True)
    batches = make_batches(train_data, cfg.train.batch_size, cfg.train.seed, dist.rank, dist.world_size,
                           cfg.finetune.bucket_batches)
    run = RunDir(out, command=command or " ".join(sys.argv), kind="finetune-run")
    run.write_config(to_dict(cfg), resume=resume)
    source_meta = read_meta(model_dir)
    meta = {**source_meta, "kind": "classifier", "stage": "finetune", "task": task.name, "labels": task.labels,
            "label_descriptions": task.descriptions, "finetuned_from": str(Path(model_dir).resolve()),
            "early_exit": early, "max_length": t.max_length, "pooling": pooling}
    if late.late_layers is not None:
        meta["late_interaction"] = clf.settings()
    extra = {}
    if (Path(model_dir) / "vocab_map.json").exists():
        extra["vocab_map.json"] = read_json(Path(model_dir) / "vocab_map.json")

    def save(mod, directory):
        save_model_dir(mod.model, directory, tokenizer, {**meta, "step": trainer.step}, extra_json=extra)

    callbacks = []
    pruning = prune_end = None
    if cfg.finetune.prune is not None:  # task-level pruning; its masks keep the zeros a pruned model has
        from edgekit.finetune.task_prune import task_pruning

        pruning, prune_end = task_pruning(clf, cfg.finetune.prune, cfg.train.max_steps)
        callbacks.append(pruning)
        meta["target_sparsity"] = cfg.finetune.prune.sparsity
    elif cfg.finetune.keep_sparsity:
        from edgekit.prune import fixed_mask_callback

        # a late-interaction model: the wrapped classifier's zeros only (its zero-initialised
        # segment embedding must learn)
        keeper = fixed_mask_callback(clf.classifier if late.late_layers is not None else clf)
        if keeper is not None:
            callbacks.append(keeper)
            meta["sparsity_kept"] = round(keeper.pruner.sparsity, 6)
    def next_batch():
        idx = batches.next()
        batch = train_data.collate(idx)
        if distilled is not None:
            batch["teacher_logits"] = train_data.teacher_logits[idx]
        return batch

    trainer = Trainer(module, next_batch, batches, cfg.train, run, save_model=save,
                      callbacks=callbacks, dist=dist, desc=f"finetune {task.name}")
    evaluator = EvalCallback(module, dev_data, cfg.finetune.eval_every, run, save, trainer.device, dist.is_main)
    evaluator.min_step = prune_end or 0
    trainer.callbacks.append(evaluator)
    if resume:
        trainer.resume()
    if pruning is not None:
        pruning.start(trainer.step)
    start = time.perf_counter()
    outcome = trainer.train(stop_after_step=stop_after_step)
    if outcome["interrupted"]:
        return {"interrupted": True, "step": outcome["step"], "run_dir": str(out)}
    evaluator.evaluate_last(trainer.step)
    best_dir = out / "best"
    from edgekit.io import atomic_dir

    with atomic_dir(out / "model", overwrite=True) as tmp:  # this run's own model (a kill may have left it)
        shutil.copytree(best_dir, tmp, dirs_exist_ok=True)
    best = max((r for r in evaluator.history if r["step"] >= evaluator.min_step), key=lambda r: r["accuracy"])
    results = {
        "stage": "finetune", "task": task.name, "task_note": task.note, "labels": task.num_labels,
        "train_examples": len(train_data), "dev_examples": len(dev_data), "steps": trainer.step,
        "early_exit": early, "pooling": pooling, "sparsity_kept": meta.get("sparsity_kept"),
        "late_interaction": meta.get("late_interaction"),
        "segments_merged": getattr(train_data, "merged", None),
        "best_step": evaluator.best_step, "schedule": schedule, "task_distill": distilled and
        {k: v for k, v in distilled.items() if k != "key"},
        "task_prune": pruning and {"sparsity": cfg.finetune.prune.sparsity, "end_step": prune_end,
                                   "recovery_steps": trainer.step - prune_end, "scope": cfg.finetune.prune.scope},
        "dev_accuracy": best["accuracy"],
        "dev_accuracy_per_exit": best["accuracy_per_exit"], "history": evaluator.history,
        "seconds": round(time.perf_counter() - start, 1), "model_dir": str(out / "model"),
    }
    run.write_results(results)
    return results
