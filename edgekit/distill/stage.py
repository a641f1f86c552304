"""The ``edgekit distill`` run: prepare the student's vocabulary, build the student, train it on the
relation losses of ``edgekit.distill.minilm`` against the frozen teacher, write ``OUT/model``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from edgekit.checkpoint import load_encoder, load_tokenizer, resolve_teacher, save_model_dir
from edgekit.config import to_dict
from edgekit.data import ResumableBatches, TokenizedCorpus, read_corpus
from edgekit.distill.config import DistillConfig
from edgekit.distill.minilm import RelationDistiller
from edgekit.errors import UserError
from edgekit.io import RunDir, atomic_dir, check_run_dir, read_json, write_json
from edgekit.student import build_student, count_parameters
from edgekit.train import Trainer, init_distributed
from edgekit.vocab import VOCAB_KIND, teacher_to_student_ids, trim_vocabulary

TRIM_AUTO_THRESHOLD = 50_000


def _prepare_vocab(cfg: DistillConfig, run: RunDir, tokenizer, texts):
    """The student's tokenizer and the teacher-id -> student-id map (saved in the run to resume)."""
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
    # in one piece: a kill or a full disk must not leave a tokenizer.json cut short beside the run
    with atomic_dir(vocab_dir, VOCAB_KIND) as tmp:
        student_tok.save_pretrained(tmp)
        write_json(tmp / "report.json", report)
        write_json(tmp / "vocab_map.json", {"teacher_ids": kept})
    return student_tok, kept, report


def distill(cfg: DistillConfig, out, resume: bool = False, stop_after_step: int | None = None,
            command: str | None = None, overwrite: bool = False) -> dict:
    """Distill ``cfg.teacher`` into a fresh student; the student is written to ``OUT/model``."""
    out = Path(out)
    cfg.student.validate()
    cfg.train.validate()
    if cfg.teacher.path is None:
        raise UserError("no teacher given; pass --teacher DIR (a Hugging Face encoder checkpoint) or --teacher e5-small.")
    if cfg.data.max_length < 8:
        raise UserError(f"data.max_length must be at least 8 tokens, got {cfg.data.max_length}.")
    check_run_dir(out, resume, overwrite, "distill-run")
    dist = init_distributed()
    torch.manual_seed(cfg.train.seed)

    teacher_dir = resolve_teacher(cfg.teacher.path)
    teacher = load_encoder(teacher_dir, role="teacher", frozen=True)
    tokenizer = load_tokenizer(teacher_dir)
    texts = read_corpus(cfg.data.corpus, cfg.data.text_field, cfg.data.max_lines)

    run = RunDir(out, command=command or " ".join(sys.argv), kind="distill-run")
    if dist.is_main:
        run.write_config(to_dict(cfg), resume=resume)
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
        "model_dir": str(out / "model"),
        "parameters": params,
        "nonzero_parameters": nonzero,
        "teacher_layer": distiller.teacher_layer,
        "relation_heads": distiller.relation_heads,
        "vocab": vocab_report,
        "corpus_examples": len(corpus),
        "world_size": dist.world_size,
    }
    if dist.is_main:
        save_student(distiller, out / "model")
        run.write_results(results)
    if dist.enabled:
        from edgekit.train import barrier

        barrier(dist)
    return results
