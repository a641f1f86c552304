"""The ``edgekit tune`` run: adapt a base encoder to a classification task with one of five methods.

The run directory follows ``edgekit finetune``'s: ``config.json`` (effective recipe),
``versions.json``, ``metrics.jsonl``, ``checkpoints/step-N`` (resumable), ``best/`` (best dev
accuracy so far) and ``results.json``; the result is ``OUT/task.safetensors``, the task file
(``edgekit.tune.taskfile``) that ``TaskBank`` and ``edgekit eval --tasks`` load onto the base.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import torch

from edgekit.checkpoint import check_model_dir, load_encoder, load_tokenizer
from edgekit.config import to_dict
from edgekit.data import ResumableBatches, TokenizedCorpus
from edgekit.errors import UserError
from edgekit.io import RunDir, check_run_dir, claim
from edgekit.tasks import load_task
from edgekit.train import Trainer, init_distributed
from edgekit.tune.adapter import adapter_rank
from edgekit.tune.config import TuneConfig
from edgekit.tune.model import (FROZEN_BASE, OPTION_METHODS, Base, TuneModule, TuneSpec, lora_arguments,
                                special_token_ids)
from edgekit.tune.options import check_prompt_count, default_prompt_count
from edgekit.tune.taskfile import save_task_file, task_meta

TASK_FILE = "task.safetensors"
RUN_KIND = "tune-run"


def resolve_pooling(choice: str, model_dir) -> str:
    """``cls`` or ``mean``; ``auto`` is what the checkpoint was trained with (e5: mean)."""
    if choice == "auto":
        from edgekit.finetune.pooling import checkpoint_pooling

        return checkpoint_pooling(model_dir)
    if choice not in ("cls", "mean"):
        raise UserError(f"tune.pooling must be one of auto, cls, mean, got {choice!r}.")
    return choice


def build_spec(cfg: TuneConfig, base: Base, tokenizer, num_labels: int, pooling: str) -> TuneSpec:
    """The task's ``TuneSpec`` from the recipe, with A.2's defaults filled in and checked."""
    t, method = cfg.tune, cfg.tune.method
    spec = TuneSpec(method=method, num_labels=num_labels, pooling=pooling)
    if method in OPTION_METHODS:
        spec.special_ids = special_token_ids(tokenizer)
        if not spec.special_ids or tokenizer.cls_token_id is None and tokenizer.bos_token_id is None:
            raise UserError("option tuning needs a tokenizer that starts every text with a special token ([CLS] or "
                            "<s>); this one has none.")
    if method == "option-adapter":
        spec.adapter_rank = t.adapter_rank or adapter_rank(base.hidden, base.heads)
        if spec.adapter_rank < 1:
            raise UserError(f"tune.adapter_rank must be at least 1, got {spec.adapter_rank}.")
        shared = t.adapter_sharing == "shared" or (t.adapter_sharing == "auto" and base.model_type == "albert")
        spec.adapter_count = 1 if shared else base.depth
    if method == "lora":
        if t.lora_rank < 1:
            raise UserError(f"tune.lora_rank must be at least 1, got {t.lora_rank}.")
        spec.lora = lora_arguments(base.model_type, t.lora_rank, t.lora_alpha, t.lora_dropout, t.lora_targets)
    if method in FROZEN_BASE:
        max_length = cfg.task.max_length
        options = num_labels if method in OPTION_METHODS else 0
        if t.prompts is None:
            other = (spec.adapter_count * (2 * base.hidden * spec.adapter_rank + spec.adapter_rank + base.hidden + 1)
                     + len(spec.special_ids) * base.width
                     + (0 if options else (base.hidden + 1) * num_labels))
            room = base.positions - max_length
            if room < max(1, options):
                raise UserError(f"task.max_length {max_length} leaves {max(room, 0)} of the model's {base.positions} "
                                f"positions for soft prompts, fewer than the {max(1, options)} {method} tuning needs; "
                                "lower task.max_length.")
            spec.prompts = max(default_prompt_count(base.parameter_count(), base.width, other, room), options)
        else:
            spec.prompts = t.prompts
        check_prompt_count(spec.prompts, base.positions, max_length, options, method)
    return spec


def parameter_report(module: TuneModule, base_parameters: int) -> dict:
    trainable = sum(p.numel() for p in module.trainable().values())
    return {"trainable_parameters": trainable, "base_parameters": base_parameters,
            "trainable_percent": round(100.0 * trainable / base_parameters, 4)}


def tune(cfg: TuneConfig, out, resume: bool = False, stop_after_step: int | None = None, command: str | None = None,
         overwrite: bool = False, echo=print) -> dict:
    """Tune ``cfg.model`` on ``cfg.task`` with ``cfg.tune.method``; writes ``OUT/task.safetensors``."""
    from edgekit.finetune import EvalCallback

    out = Path(out)
    if cfg.model is None:
        raise UserError("no model given; pass --model DIR (any encoder edgekit accepts as a teacher, 'e5-small', "
                        "or a student).")
    cfg.train.validate()
    if cfg.tune.eval_every < 1:
        raise UserError(f"tune.eval_every must be at least 1, got {cfg.tune.eval_every}.")
    if cfg.tune.freeze_embeddings and cfg.tune.method != "finetune":
        raise UserError(f"tune.freeze_embeddings applies to the finetune method only; the {cfg.tune.method} method "
                        "already keeps the base frozen.")
    model_dir = check_model_dir(cfg.model, builtin=True)
    check_run_dir(out, resume, overwrite, RUN_KIND)
    t = cfg.task
    task = load_task(t.name, t.data_dir, t.text_field, t.text_pair_field, t.label_field,
                     test_file=getattr(t, "test_file", None), provenance=getattr(t, "provenance", None))
    dist = init_distributed()
    torch.manual_seed(cfg.train.seed)
    tokenizer = load_tokenizer(model_dir)
    base = Base(load_encoder(model_dir))
    base_parameters = base.parameter_count()
    pooling = resolve_pooling(cfg.tune.pooling, model_dir)
    spec = build_spec(cfg, base, tokenizer, task.num_labels, pooling)
    module = TuneModule(base, spec, seed=cfg.train.seed)
    if cfg.tune.freeze_embeddings:
        base.word_embeddings.requires_grad_(False)
    counts = parameter_report(module, base_parameters)
    if dist.is_main:
        echo(f"tune {spec.method} on {task.name}: {counts['trainable_parameters']:,} trainable parameters, "
             f"{counts['trainable_percent']:.3f}% of the base's {base_parameters:,}"
             + (f" ({spec.prompts} soft prompts)" if spec.prompts else ""))

    def subset(split, limit):
        n = len(split) if limit is None else min(limit, len(split))
        return TokenizedCorpus(tokenizer, split.texts[:n], t.max_length, labels=split.labels[:n])

    train_data, dev_data = subset(task.train, t.max_train_examples), subset(task.dev, t.max_eval_examples)
    batches = ResumableBatches(len(train_data), cfg.train.batch_size, cfg.train.seed, dist.rank, dist.world_size)
    run = RunDir(out, command=command or " ".join(sys.argv), kind=RUN_KIND)
    run.write_config(to_dict(cfg), resume=resume)
    meta = {**task_meta(spec, task.name, task.labels, t.max_length, model_dir, base, task.descriptions),
            "trainable_parameters": counts["trainable_parameters"]}

    def save(mod, directory):
        from edgekit import __version__

        save_task_file(Path(directory) / TASK_FILE, mod.state_dict(),
                       {**meta, "step": trainer.step, "edgekit_version": __version__})

    trainer = Trainer(module, lambda: train_data.collate(batches.next()), batches, cfg.train, run, save_model=save,
                      dist=dist, desc=f"tune {spec.method} {task.name}")
    evaluator = EvalCallback(module, dev_data, cfg.tune.eval_every, run, save, trainer.device, dist.is_main)
    trainer.callbacks.append(evaluator)
    if resume:
        trainer.resume()
    start = time.perf_counter()
    outcome = trainer.train(stop_after_step=stop_after_step)
    if outcome["interrupted"]:
        return {"interrupted": True, "step": outcome["step"], "run_dir": str(out)}
    evaluator.evaluate_last(trainer.step)
    if dist.is_main:
        claim(out / TASK_FILE)
        tmp = out / f".{TASK_FILE}.tmp-{os.getpid()}"
        shutil.copyfile(out / "best" / TASK_FILE, tmp)
        os.replace(tmp, out / TASK_FILE)
    best = max(evaluator.history, key=lambda r: r["accuracy"])
    base_bytes = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    results = {
        "stage": "tune", "method": spec.method, "task": task.name, "task_note": task.note, "labels": task.num_labels,
        **counts, "prompts": spec.prompts, "adapter_rank": spec.adapter_rank, "adapter_count": spec.adapter_count,
        "pooling": spec.pooling, "lr": cfg.train.lr,
        "global_batch": cfg.train.batch_size * cfg.train.grad_accum * dist.world_size,
        "train_examples": len(train_data), "dev_examples": len(dev_data), "steps": trainer.step,
        "best_step": evaluator.best_step, "dev_accuracy": best["accuracy"], "history": evaluator.history,
        "seconds": round(time.perf_counter() - start, 1), "task_file": str(out / TASK_FILE),
        "task_file_bytes": (out / TASK_FILE).stat().st_size, "base_bytes": base_bytes,
    }
    if dist.is_main:
        run.write_results(results)
    return results
