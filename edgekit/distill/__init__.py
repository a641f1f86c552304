"""``edgekit distill``: MiniLM task-agnostic relation distillation of a teacher into an ALBERT student.

Python API::

    from edgekit.distill import load_distill_config, distill
    cfg = load_distill_config("recipes/quickstart.yaml", {"train": {"max_steps": 100}})
    result = distill(cfg, out="runs/quickstart")
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from edgekit.checkpoint import load_encoder, load_tokenizer, resolve_teacher, save_model_dir
from edgekit.config import load_config, to_dict
from edgekit.data import ResumableBatches, TokenizedCorpus, read_corpus
from edgekit.distill.minilm import RelationDistiller
from edgekit.errors import UserError
from edgekit.io import RunDir, read_json, write_json
from edgekit.student import StudentConfig, build_student, count_parameters
from edgekit.train import Trainer, TrainConfig, init_distributed, latest_checkpoint

# Sections of a pipeline recipe that belong to later stages; distill skips them.
OTHER_STAGES = ("prune", "early_exit", "finetune", "quantize", "export", "eval", "tasks", "pipeline", "compare")


@dataclass
class TeacherSection:
    path: str | None = None        # a checkpoint directory, or the built-in name "e5-small"
    layer: int = -1                # 1-based teacher layer to distill from; -1 = last


@dataclass
class VocabSection:
    trim: Literal["auto", "true", "false"] = "auto"   # auto: trim teachers with more than 50k pieces
    min_count: int = 1


@dataclass
class DataSection:
    corpus: list[str] = field(default_factory=list)
    text_field: str = "text"
    max_length: int = 128
    max_lines: int | None = None


@dataclass
class DistillSection:
    method: str = "minilmv2"              # minilmv2 (Q-Q, K-K, V-V relations) or minilmv1
    relation_heads: int | None = None     # default: a head count that divides both hidden sizes
    student_layer: int = -1


@dataclass
class DistillConfig:
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentConfig = field(default_factory=StudentConfig)
    vocab: VocabSection = field(default_factory=VocabSection)
    data: DataSection = field(default_factory=DataSection)
    distill: DistillSection = field(default_factory=DistillSection)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_distill_config(recipe=None, overrides: dict | None = None) -> DistillConfig:
    return load_config(DistillConfig, recipe, overrides, ignore_sections=OTHER_STAGES, stage="distill")


TRIM_AUTO_THRESHOLD = 50_000


def _prepare_vocab(cfg: DistillConfig, run: RunDir, tokenizer, texts):
    """The student's tokenizer and the teacher-id -> student-id map (saved in the run to resume)."""
    from edgekit.vocab import trim_vocabulary

    vocab_dir = run.path / "vocab"
    if (vocab_dir / "vocab_map.json").exists():
        kept = read_json(vocab_dir / "vocab_map.json")["teacher_ids"]
        return load_tokenizer(vocab_dir), kept, read_json(vocab_dir / "report.json")
    trim = cfg.vocab.trim == "true" or (cfg.vocab.trim == "auto" and len(tokenizer) > TRIM_AUTO_THRESHOLD)
    if trim:
        result = trim_vocabulary(tokenizer, texts, cfg.vocab.min_count, cfg.data.max_length)
        student_tok, kept, report = result.tokenizer, result.kept_ids, result.report
    else:
        student_tok, kept = tokenizer, list(range(len(tokenizer)))
        report = {"original_vocab_size": len(tokenizer), "trimmed_vocab_size": len(tokenizer), "trimmed": False}
    report["trimmed"] = trim
    student_tok.save_pretrained(vocab_dir)
    write_json(vocab_dir / "report.json", report)
    write_json(vocab_dir / "vocab_map.json", {"teacher_ids": kept})
    return student_tok, kept, report


def teacher_to_student_ids(teacher_vocab_size: int, kept: list[int], unk_id: int | None) -> torch.Tensor:
    """Lookup table teacher id -> student id (pieces the student lacks map to its unknown token)."""
    id_map = torch.full((teacher_vocab_size,), unk_id or 0, dtype=torch.long)
    id_map[torch.tensor(kept)] = torch.arange(len(kept))
    return id_map


def check_run_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run or silently restart an unfinished one."""
    if (out / "student" / "config.json").exists() and not resume:
        raise UserError(f"'{out}' already holds a finished student; choose another --out or delete it.")
    if latest_checkpoint(out) is not None and not resume:
        raise UserError(f"'{out}' has checkpoints of an unfinished run; pass --resume to continue it or choose another --out.")


def distill(cfg: DistillConfig, out, resume: bool = False, stop_after_step: int | None = None,
            command: str | None = None) -> dict:
    """Distill ``cfg.teacher`` into a fresh student; the student is written to ``OUT/student``."""
    out = Path(out)
    cfg.student.validate()
    cfg.train.validate()
    if cfg.teacher.path is None:
        raise UserError("no teacher given; pass --teacher DIR (a Hugging Face encoder checkpoint) or --teacher e5-small.")
    if cfg.data.max_length < 8:
        raise UserError(f"data.max_length must be at least 8 tokens, got {cfg.data.max_length}.")
    check_run_dir(out, resume)
    dist = init_distributed()
    torch.manual_seed(cfg.train.seed)

    teacher_dir = resolve_teacher(cfg.teacher.path)
    teacher = load_encoder(teacher_dir, role="teacher", frozen=True)
    tokenizer = load_tokenizer(teacher_dir)
    texts = read_corpus(cfg.data.corpus, cfg.data.text_field, cfg.data.max_lines)

    run = RunDir(out, command=command or " ".join(sys.argv))
    if dist.is_main:
        run.write_config(to_dict(cfg))
    student_tok, kept, vocab_report = _prepare_vocab(cfg, run, tokenizer, texts) if dist.is_main else (None, None, None)
    if dist.enabled:
        from edgekit.train import barrier

        barrier(dist)
        if not dist.is_main:
            student_tok, kept, vocab_report = _prepare_vocab(cfg, run, tokenizer, texts)

    id_map = teacher_to_student_ids(len(tokenizer), kept, student_tok.unk_token_id)
    corpus = TokenizedCorpus(tokenizer, texts, cfg.data.max_length)
    batches = ResumableBatches(len(corpus), cfg.train.batch_size, cfg.train.seed, dist.rank, dist.world_size)

    specials = {k: getattr(student_tok, k) for k in ("bos_token_id", "eos_token_id")}
    student = build_student(cfg.student, len(kept), pad_token_id=student_tok.pad_token_id or 0,
                            seed=cfg.train.seed, **specials)
    distiller = RelationDistiller(teacher, student, cfg.teacher.layer, {cfg.distill.student_layer: 1.0},
                                  cfg.distill.method, cfg.distill.relation_heads)
    meta = {
        "kind": "student",
        "stage": "distill",
        "teacher": str(Path(teacher_dir).resolve()),
        "corpus": [str(c) for c in cfg.data.corpus],
        "text_field": cfg.data.text_field,
        "max_length": cfg.data.max_length,
        "teacher_model_type": teacher.config.model_type,
        "teacher_layer": distiller.teacher_layer,
        "method": cfg.distill.method,
        "relation_heads": distiller.relation_heads,
        "student": to_dict(cfg.student),
        "vocab": vocab_report,
    }

    def save_student(module, directory):
        save_model_dir(module.student, directory, student_tok, {**meta, "step": trainer.step},
                       extra_json={"vocab_map.json": {"teacher_ids": kept}})

    trainer = Trainer(distiller, lambda: corpus.collate(batches.next(), id_map), batches, cfg.train, run,
                      save_model=save_student, dist=dist, desc="distill")
    distiller.teacher.to(trainer.device)
    if resume and not trainer.resume() and dist.is_main:
        print(f"no checkpoint in '{out}' yet; starting from step 0", file=sys.stderr)
    start = time.perf_counter()
    outcome = trainer.train(stop_after_step=stop_after_step)
    distiller.close()
    if outcome["interrupted"]:
        return {"interrupted": True, "step": outcome["step"], "run_dir": str(out)}
    params, nonzero = count_parameters(student)
    results = {
        "stage": "distill",
        "steps": trainer.step,
        "final_metrics": outcome["last"],
        "seconds": round(time.perf_counter() - start, 1),
        "student_dir": str(out / "student"),
        "parameters": params,
        "nonzero_parameters": nonzero,
        "teacher_layer": distiller.teacher_layer,
        "relation_heads": distiller.relation_heads,
        "vocab": vocab_report,
        "corpus_examples": len(corpus),
        "world_size": dist.world_size,
    }
    if dist.is_main:
        save_student(distiller, out / "student")
        run.write_results(results)
    if dist.enabled:
        from edgekit.train import barrier

        barrier(dist)
    return results
