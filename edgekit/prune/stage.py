"""``edgekit prune``: the post-distillation step of M6-Rec section 3.5.

Gradual magnitude pruning of every embedding table and linear layer to the target sparsity on
Zhu & Gupta's cubic schedule, while the relation-distillation loss against the teacher keeps
being optimized, summed over all exits with the early-exit weights 2k/(L(L+1)).

Python API::

    from edgekit.prune.stage import load_prune_config, prune
    cfg = load_prune_config(None, {"model": "runs/distill/student", "prune": {"sparsity": 0.8}})
    prune(cfg, out="runs/prune")
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from edgekit.checkpoint import check_model_dir, load_encoder, load_tokenizer, read_meta, resolve_teacher, save_model_dir
from edgekit.config import load_config, to_dict
from edgekit.data import ResumableBatches, TokenizedCorpus, read_corpus
from edgekit.distill import DataSection, DistillSection, TeacherSection, check_run_dir, teacher_to_student_ids
from edgekit.distill.minilm import RelationDistiller
from edgekit.early_exit import exit_weights
from edgekit.errors import UserError
from edgekit.io import RunDir, read_json, write_json
from edgekit.prune.pruner import MagnitudePruner
from edgekit.prune.report import plot_loss, plot_schedule, sparsity_report
from edgekit.prune.schedule import check_sparsity, cubic_sparsity
from edgekit.student import count_parameters, load_student
from edgekit.train import Trainer, TrainConfig, init_distributed

OTHER_STAGES = ("student", "vocab", "finetune", "quantize", "export", "eval", "tasks", "pipeline", "compare")


@dataclass
class PruneSection:
    sparsity: float = 0.8                  # final sparsity s_f of every pruned tensor
    initial_sparsity: float = 0.0          # s_i
    begin_step: int = 0                    # t0
    end_step: int | None = None            # t0 + nΔt; default: 3/4 of train.max_steps
    frequency: int = 10                    # Δt: masks are recomputed every Δt steps
    scope: Literal["layer", "global"] = "layer"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)


@dataclass
class EarlyExitSection:
    enabled: bool = True                   # Σ_k 2k/(L(L+1))·L_k over all exits instead of L_L alone


@dataclass
class PruneConfig:
    model: str | None = None               # the student directory to prune (from `edgekit distill`)
    teacher: TeacherSection = field(default_factory=lambda: TeacherSection(path=None, layer=0))
    data: DataSection = field(default_factory=DataSection)
    distill: DistillSection = field(default_factory=DistillSection)
    prune: PruneSection = field(default_factory=PruneSection)
    early_exit: EarlyExitSection = field(default_factory=EarlyExitSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=2000, lr=5e-5))


def load_prune_config(recipe=None, overrides: dict | None = None) -> PruneConfig:
    return load_config(PruneConfig, recipe, overrides, ignore_sections=OTHER_STAGES, stage="prune")


class PruningCallback:
    """Between optimizer steps: mask gradients, step, re-apply masks, follow the cubic schedule."""

    def __init__(self, pruner: MagnitudePruner, section: PruneSection, end_step: int):
        self.pruner, self.s, self.end_step = pruner, section, end_step

    def target(self, step: int) -> float:
        return cubic_sparsity(step, self.s.initial_sparsity, self.s.sparsity, self.s.begin_step, self.end_step,
                              self.s.frequency)

    def start(self, step: int) -> None:
        if self.pruner.sparsity is None and self.target(step) > 0:
            self.pruner.update_masks(self.target(step))

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


def _validate(cfg: PruneConfig) -> int:
    s = cfg.prune
    check_sparsity(s.sparsity, "prune.sparsity")
    check_sparsity(s.initial_sparsity, "prune.initial_sparsity")
    end = s.end_step if s.end_step is not None else max(s.begin_step + 1, int(0.75 * cfg.train.max_steps))
    cubic_sparsity(0, s.initial_sparsity, s.sparsity, s.begin_step, end, s.frequency)  # validates the schedule
    if end > cfg.train.max_steps:
        raise UserError(f"prune.end_step {end} is after the last training step {cfg.train.max_steps}; "
                        "lower prune.end_step or raise train.max_steps so the target sparsity is reached.")
    return end


def prune(cfg: PruneConfig, out, resume: bool = False, stop_after_step: int | None = None,
          command: str | None = None) -> dict:
    """Prune ``cfg.model`` to ``cfg.prune.sparsity``; the pruned student is written to ``OUT/student``."""
    out = Path(out)
    if cfg.model is None:
        raise UserError("no model given; pass --model STUDENT_DIR (a student written by `edgekit distill`).")
    cfg.train.validate()
    end_step = _validate(cfg)
    student_dir = check_model_dir(cfg.model, role="model")
    meta = read_meta(student_dir)
    check_run_dir(out, resume)
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
    run = RunDir(out, command=command or " ".join(sys.argv))
    if dist.is_main:
        run.write_config(to_dict(cfg))
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
                     "end_step": end_step, "frequency": cfg.prune.frequency, "scope": cfg.prune.scope},
        "early_exit": cfg.early_exit.enabled,
        "final_metrics": outcome["last"],
        "seconds": round(time.perf_counter() - start, 1),
        "student_dir": str(out / "student"),
        "parameters": params,
        "nonzero_parameters": nonzero,
        "totals": report["totals"],
    }
    if dist.is_main:
        save_model_dir(student, out / "student", student_tok, {**new_meta, "step": trainer.step,
                                                               "sparsity": report["totals"]["sparsity"]},
                       extra_json={"vocab_map.json": {"teacher_ids": kept}})
        write_json(out / "sparsity.json", report)
        steps = list(range(0, cfg.train.max_steps + 1))
        plot_schedule(steps, [callback.target(t) for t in steps], out / "sparsity_schedule.png")
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().split("\n") if x.strip()]
        plot_loss([r["step"] for r in records], [r["loss"] for r in records], out / "loss.png")
        run.write_results(results)
    return results
