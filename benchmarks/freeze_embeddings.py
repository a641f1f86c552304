"""Fine-tuning speed of the e5-small teacher with and without ``finetune.freeze_embeddings``.

The README says freezing the token embedding table makes fine-tuning a large-vocabulary teacher
faster on a CPU: e5-small has 250k x 384 embeddings (96M of its 118M parameters), which AdamW
otherwise updates, with two moment buffers, on every step. This measures it.

Both classifiers are built as ``edgekit finetune`` builds them (``build_classifier`` on the
built-in teacher, ``freeze_word_embeddings`` for the frozen one, ``ClassifierModule``) and trained
by the real ``edgekit.train.Trainer``, one optimizer step per call, on the SAME batch: 32 reviews
of the sentiment task's train split at 64 tokens (the quickstart's fine-tuning shape). The steps
alternate between the two models (A B, then B A, ...), so load from other processes on a shared
machine hits both alike; the first step of each is a warm-up and is not timed. The result is
seconds per step of each (median) and their ratio, with every step's time, the CPU time other
processes used during each step (``/proc/stat``) and the load average.

Run from the project root::

    python benchmarks/freeze_embeddings.py              # ~2-4 min on 2 cores; writes the results
    python benchmarks/freeze_embeddings.py --steps 3    # a quicker, noisier run

Writes ``benchmarks/results/freeze_embeddings.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH, MAX_LENGTH = 32, 64


def _busy_jiffies() -> int | None:
    try:
        values = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    except OSError:
        return None
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def other_cpus(fn):
    """Run ``fn``; returns (seconds, CPUs that other processes kept busy meanwhile, or None)."""
    busy0, own0, t0 = _busy_jiffies(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    busy1, own1 = _busy_jiffies(), resource.getrusage(resource.RUSAGE_SELF)
    if busy0 is None or busy1 is None:
        return seconds, None
    own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    return seconds, round(max(0.0, (busy1 - busy0) / os.sysconf("SC_CLK_TCK") - own) / seconds, 2)


class OneBatch:
    """The data position object the Trainer checkpoints; the batch never changes."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def build(frozen: bool, teacher: Path, task, batch: dict, run_dir: Path):
    import torch

    from edgekit.finetune import ClassifierModule, build_classifier, freeze_word_embeddings
    from edgekit.io import RunDir
    from edgekit.train import TrainConfig, Trainer

    torch.manual_seed(0)
    clf = build_classifier(teacher, task)
    frozen_params = freeze_word_embeddings(clf) if frozen else 0
    module = ClassifierModule(clf, early_exit=False)
    cfg = TrainConfig(max_steps=1, batch_size=BATCH, lr=5e-5, warmup_ratio=0.0, save_every=10**9, log_every=1)
    trainer = Trainer(module, lambda: batch, OneBatch(), cfg, RunDir(run_dir), desc="frozen" if frozen else "full")
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainer, {"frozen_parameters": frozen_params, "trainable_parameters": trainable}


def one_step(trainer) -> None:
    """One more optimizer step of the real training loop (forward, backward, clip, AdamW, schedule)."""
    trainer.cfg.max_steps = trainer.step + 1
    trainer.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="Timed steps of each model (after one warm-up step each).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "freeze_embeddings.json")
    args = ap.parse_args()

    import torch
    import transformers

    from edgekit.checkpoint import load_tokenizer, resolve_teacher
    from edgekit.data import TokenizedCorpus
    from edgekit.tasks import load_task

    os.environ.setdefault("TQDM_DISABLE", "1")
    teacher = resolve_teacher("e5-small")
    task = load_task("sentiment")
    tokenizer = load_tokenizer(teacher)
    data = TokenizedCorpus(tokenizer, task.train.texts[:BATCH], MAX_LENGTH, labels=task.train.labels[:BATCH])
    batch = data.collate(range(BATCH))
    started = _dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: build(name == "frozen", teacher, task, batch, Path(tmp) / name) for name in ("full", "frozen")}
        for name, (trainer, _) in models.items():
            one_step(trainer)  # warm-up: allocator, AdamW state, oneDNN kernels
        times = {name: [] for name in models}
        others = {name: [] for name in models}
        for i in range(args.steps):
            order = ("full", "frozen") if i % 2 == 0 else ("frozen", "full")
            for name in order:
                seconds, other = other_cpus(lambda: one_step(models[name][0]))
                times[name].append(round(seconds, 4))
                others[name].append(other)
                print(f"round {i + 1}/{args.steps} {name}: {seconds:.2f} s/step (other processes: {other} CPUs)",
                      flush=True)
        sizes = {name: facts for name, (_, facts) in models.items()}
    median = {name: statistics.median(ts) for name, ts in times.items()}
    per_round = [round(a / b, 3) for a, b in zip(times["full"], times["frozen"])]
    result = {
        "command": "python benchmarks/freeze_embeddings.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "date": started.isoformat(timespec="seconds"),
        "what": "seconds per optimizer step of edgekit.train.Trainer fine-tuning the e5-small teacher "
                "(build_classifier + ClassifierModule) on one fixed batch, with and without "
                "finetune.freeze_embeddings; steps alternate between the two models",
        "batch": {"examples": BATCH, "max_length": MAX_LENGTH, "tokens": int(batch["attention_mask"].sum()),
                  "source": "sentiment train split, first 32 reviews"},
        "parameters": sizes,
        "seconds_per_step": times,
        "other_processes_cpus": others,
        "median_seconds_per_step": {k: round(v, 3) for k, v in median.items()},
        "speedup_frozen": round(median["full"] / median["frozen"], 2),
        "speedup_per_round": per_round,
        "environment": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "load_average_before": [round(x, 2) for x in load_before],
                        "load_average_after": [round(x, 2) for x in os.getloadavg()]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"full: {median['full']:.2f} s/step, frozen embeddings: {median['frozen']:.2f} s/step; "
          f"{result['speedup_frozen']:.2f}x faster frozen (per round: {per_round}); wrote {args.out}")


if __name__ == "__main__":
    main()
