"""The ``edgekit prune`` run: the post-distillation step of M6-Rec section 3.5.

Gradual magnitude pruning of every embedding table and linear layer to the target sparsity on
Zhu & Gupta's cubic schedule (``edgekit.prune.schedule``), while the relation-distillation loss
against the teacher keeps being optimized, summed over all exits with the early-exit weights
2k/(L(L+1)). The callbacks here connect the pruner's masks to the training loop.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import torch

from edgekit.checkpoint import check_model_dir, load_encoder, load_tokenizer, read_meta, resolve_teacher, save_model_dir
from edgekit.config import to_dict
from edgekit.data import ResumableBatches, TokenizedCorpus, read_corpus
from edgekit.distill.minilm import RelationDistiller
from edgekit.early_exit import exit_weights
from edgekit.errors import UserError
from edgekit.io import RunDir, check_run_dir, read_json, write_json
from edgekit.prune.config import PruneConfig, PruneSection, validate_prune_config
from edgekit.prune.pruner import MagnitudePruner
from edgekit.prune.report import plot_loss, plot_schedule, sparsity_report
from edgekit.prune.schedule import cubic_sparsity
from edgekit.student import count_parameters, load_student
from edgekit.train import Trainer, init_distributed
from edgekit.vocab import teacher_to_student_ids


class PruningCallback:
    """Between optimizer steps: mask gradients, step, re-apply masks, follow the cubic schedule."""

    def __init__(self, pruner: MagnitudePruner, section: PruneSection, end_step: int):
        self.pruner, self.s, self.end_step = pruner, section, end_step

    def target(self, step: int) -> float:
        return cubic_sparsity(step, self.s.initial_sparsity, self.s.sparsity, self.s.begin_step, self.end_step,
                              self.s.frequency)

    def start(self, step: int) -> None:
        """Bring the masks to the schedule's target at ``step`` before training (re)starts.

        A fresh pruner is prepared at sparsity 0, so ``initial_sparsity > 0`` applies here, before
        the first step; a resumed one already holds its target and is left as it is."""
        target = self.target(step)
        if target != (self.pruner.sparsity or 0.0):
            self.pruner.update_masks(target)

    def before_optimizer_step(self, step: int) -> None:
        if self.pruner.sparsity is not None:
            self.pruner.mask_gradients()

    def after_optimizer_step(self, step: int) -> None:
        target = self.target(step)
        if target != (self.pruner.sparsity or 0.0):
            self.pruner.update_masks(target)
        elif self.pruner.sparsity is not None:
            self.pruner.apply_masks()

    def metrics(self) -> dict:
        return {"sparsity": round(self.pruner.sparsity or 0.0, 6)}

    def state_dict(self) -> dict:
        return self.pruner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pruner.load_state_dict(state)


class FixedMaskCallback:
    """Keep a pruned model's zeros while it trains on (fine-tuning): gradients of pruned weights are
    masked before each optimizer step and the weights re-zeroed after it (AdamW's decay and momentum
    would otherwise revive them)."""

    def __init__(self, pruner: MagnitudePruner):
        self.pruner = pruner

    def before_optimizer_step(self, step: int) -> None:
        self.pruner.mask_gradients()

    def after_optimizer_step(self, step: int) -> None:
        self.pruner.apply_masks()

    def state_dict(self) -> dict:
        return self.pruner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pruner.load_state_dict(state)


SPARSE_MIN_ZEROS = 0.05  # a model whose embedding/linear weights are at least this fraction exact zeros was pruned


def fixed_mask_callback(model, exclude=(r"pooler", r"classifier")) -> FixedMaskCallback | None:
    """A ``FixedMaskCallback`` over the zeros ``model`` already has, or None for a dense model.

    The task head (pooler, classifier) is new at fine-tuning and stays dense."""
    names = [n for n, _ in model.named_parameters()]
    pruner = MagnitudePruner(exclude=[p for p in exclude if any(re.search(p, n) for n in names)])
    pruner.prepare(model)
    if pruner.keep_zeros() < SPARSE_MIN_ZEROS:
        return None
    return FixedMaskCallback(pruner)


def prune(cfg: PruneConfig, out, resume: bool = False, stop_after_step: int | None = None,
          command: str | None = None, overwrite: bool = False) -> dict:
    """Prune ``cfg.model`` to ``cfg.prune.sparsity``; the pruned student is written to ``OUT/model``."""
    out = Path(out)
    if cfg.model is None:
        raise UserError("no model given; pass --model STUDENT_DIR (a student written by `edgekit distill`).")
    cfg.train.validate()
    end_step = validate_prune_config(cfg)
    student_dir = check_model_dir(cfg.model, role="model")
    meta = read_meta(student_dir)
    check_run_dir(out, resume, overwrite, "prune-run")
    dist = init_distributed()
    torch.manual_seed(cfg.train.seed)

    student = load_student(student_dir)
    if student.config.model_type != "albert":
        raise UserError(f"'{cfg.model}' is a {student.config.model_type} model; edgekit prune works on ALBERT students "
                        "written by `edgekit distill`.")
    pruner = MagnitudePruner(scope=cfg.prune.scope, include=cfg.prune.include or None,
                             exclude=cfg.prune.exclude or None)
    pruner.prepare(student)  # fails early on patterns matching nothing / no linear layers

    teacher_spec = cfg.teacher.path or meta.get("teacher")
    if teacher_spec is None:
        raise UserError(f"'{cfg.model}' does not record its teacher; pass --teacher DIR.")
    teacher_dir = resolve_teacher(teacher_spec)
    teacher = load_encoder(teacher_dir, role="teacher", frozen=True)
    teacher_tok = load_tokenizer(teacher_dir)
    student_tok = load_tokenizer(student_dir)
    corpus_specs = cfg.data.corpus or meta.get("corpus") or []
    text_field = cfg.data.text_field if cfg.data.corpus else meta.get("text_field", cfg.data.text_field)
    texts = read_corpus(corpus_specs, text_field, cfg.data.max_lines)
    map_file = student_dir / "vocab_map.json"
    kept = read_json(map_file)["teacher_ids"] if map_file.exists() else list(range(len(teacher_tok)))
    if len(kept) != student.config.vocab_size:
        raise UserError(f"'{cfg.model}' has {student.config.vocab_size} embeddings but its vocab_map.json lists "
                        f"{len(kept)} pieces; use a student written by `edgekit distill`.")
    id_map = teacher_to_student_ids(len(teacher_tok), kept, student_tok.unk_token_id)
    corpus = TokenizedCorpus(teacher_tok, texts, cfg.data.max_length)
    batches = ResumableBatches(len(corpus), cfg.train.batch_size, cfg.train.seed, dist.rank, dist.world_size)

    depth = student.config.num_hidden_layers
    if cfg.early_exit.enabled:
        layers = {k: float(w) for k, w in zip(range(1, depth + 1), exit_weights(depth).tolist())}
    else:
        layers = {depth: 1.0}
    teacher_layer = cfg.teacher.layer or meta.get("teacher_layer", -1)
    distiller = RelationDistiller(teacher, student, teacher_layer, layers, cfg.distill.method,
                                  cfg.distill.relation_heads or meta.get("relation_heads"))
    callback = PruningCallback(pruner, cfg.prune, end_step)
    run = RunDir(out, command=command or " ".join(sys.argv), kind="prune-run")
    if dist.is_main:
        run.write_config(to_dict(cfg), resume=resume)
    new_meta = {**meta, "stage": "prune", "pruned_from": str(Path(student_dir).resolve()),
                "target_sparsity": cfg.prune.sparsity, "early_exit": cfg.early_exit.enabled,
                "teacher": str(Path(teacher_dir).resolve()), "teacher_layer": distiller.teacher_layer}

    def save_student(module, directory):
        save_model_dir(module.student, directory, student_tok, {**new_meta, "step": trainer.step},
                       extra_json={"vocab_map.json": {"teacher_ids": kept}})

    trainer = Trainer(distiller, lambda: corpus.collate(batches.next(), id_map), batches, cfg.train, run,
                      save_model=save_student, callbacks=[callback], dist=dist, desc="prune")
    distiller.teacher.to(trainer.device)
    if resume:
        trainer.resume()
    callback.start(trainer.step)
    start = time.perf_counter()
    outcome = trainer.train(stop_after_step=stop_after_step)
    distiller.close()
    if outcome["interrupted"]:
        return {"interrupted": True, "step": outcome["step"], "run_dir": str(out)}
    pruned_names = list(pruner.tensor_names)
    pruner.squash_mask()
    report = sparsity_report(student, pruned_names)
    params, nonzero = count_parameters(student)
    results = {
        "stage": "prune",
        "steps": trainer.step,
        "target_sparsity": cfg.prune.sparsity,
        "schedule": {"initial": cfg.prune.initial_sparsity, "final": cfg.prune.sparsity, "begin_step": cfg.prune.begin_step,
                     "end_step": end_step, "recovery_steps": cfg.train.max_steps - end_step,
                     "frequency": cfg.prune.frequency, "scope": cfg.prune.scope},
        "early_exit": cfg.early_exit.enabled,
        "final_metrics": outcome["last"],
        "seconds": round(time.perf_counter() - start, 1),
        "model_dir": str(out / "model"),
        "parameters": params,
        "nonzero_parameters": nonzero,
        "totals": report["totals"],
    }
    if dist.is_main:
        save_model_dir(student, out / "model", student_tok, {**new_meta, "step": trainer.step,
                                                             "sparsity": report["totals"]["sparsity"]},
                       extra_json={"vocab_map.json": {"teacher_ids": kept}})
        write_json(out / "sparsity.json", report)
        steps = list(range(0, cfg.train.max_steps + 1))
        plot_schedule(steps, [callback.target(t) for t in steps], out / "sparsity_schedule.png")
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().split("\n") if x.strip()]
        plot_loss([r["step"] for r in records], [r["loss"] for r in records], out / "loss.png")
        run.write_results(results)
    return results
