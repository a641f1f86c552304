"""Mixed-task batches vs single-task batches of the same size, on one frozen e5-small (issue 13).

    python benchmarks/tune_mixed_throughput.py [--batch-size 32] [--batches 12] [--rounds 3] [--threads 1]

Three task files on e5-small (option-adapter with 15 classes, prompt with 119, option with 2;
parameters drawn at random: throughput does not depend on their values), 32 soft prompts each.
The same examples are run three ways, interleaved round by round, best round kept:

- ``single``: grouped by task, each batch one task, through that task's own ``TuneModule`` (plain
  matmuls, no gathering): what serving each task on its own would cost;
- ``bank, one task per batch``: the same batches through the ``TaskBank`` (per-example gathers);
- ``bank, mixed``: batches that mix the three tasks (round robin), through the ``TaskBank``.

Two text sets: every task reads TNEWS dev sentences (the same lengths: isolates the cost of
gathering per example), and each task its own CLUE dev texts (TNEWS short, IFLYTEK long: mixed
batches also pay for padding short texts to long ones). Target: mixed ≥ 0.9 × single.
Writes benchmarks/results/tune_mixed_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from edgekit.io import versions, write_json  # noqa: E402

CLUE = ROOT.parent / "shared" / "data" / "clue"
TASKS = {"tnews": ("option-adapter", 15), "iflytek": ("prompt", 119), "csl": ("option", 2)}
FIELDS = {"tnews": "sentence", "iflytek": "sentence", "csl": "abst"}


def make_task_files(base_dir: Path, out: Path, prompts: int, max_length: int) -> dict:
    from edgekit.checkpoint import load_encoder, load_tokenizer
    from edgekit.tune.adapter import adapter_rank
    from edgekit.tune.model import Base, TuneModule, TuneSpec, special_token_ids
    from edgekit.tune.taskfile import save_task_file, task_meta

    files = {}
    tok = load_tokenizer(base_dir)
    for i, (task, (method, classes)) in enumerate(TASKS.items()):
        path = out / f"{task}.safetensors"
        files[task] = path
        if path.exists():
            continue
        base = Base(load_encoder(base_dir))
        spec = TuneSpec(method=method, num_labels=classes, pooling="mean", prompts=prompts)
        if method != "prompt":
            spec.special_ids = special_token_ids(tok)
        if method == "option-adapter":
            spec.adapter_rank, spec.adapter_count = adapter_rank(base.hidden, base.heads), base.depth
        module = TuneModule(base, spec, seed=i)
        with torch.no_grad():
            for p in module.trainable().values():
                p.add_(torch.randn_like(p) * 0.02)
        save_task_file(path, module.state_dict(),
                       task_meta(spec, task, [str(c) for c in range(classes)], max_length, base_dir, base))
    return files


def texts_of(task: str, n: int) -> list[str]:
    lines = (CLUE / task / "dev.json").read_text(encoding="utf-8").split("\n")
    return [str(json.loads(x)[FIELDS[task]]) for x in lines[:n] if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=6, help="batches per task and arm in one round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "tune-throughput"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from edgekit.checkpoint import resolve_teacher
    from edgekit.data import TokenizedCorpus
    from edgekit.tune import TaskBank, load_tuned

    base_dir = resolve_teacher("e5-small")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = make_task_files(base_dir, out, args.prompts, args.max_length)
    bank = TaskBank(base_dir, files)
    solo = {t: load_tuned(f, base_dir)[0] for t, f in files.items()}
    n = args.batch_size * args.batches
    results = {}
    for text_set in ("same texts (TNEWS)", "own texts"):
        per_task = {t: texts_of("tnews" if text_set.startswith("same") else t, n) for t in TASKS}
        single_batches = [(t, per_task[t][s:s + args.batch_size]) for t in TASKS for s in range(0, n, args.batch_size)]
        stream = [(t, per_task[t][i]) for i in range(n) for t in TASKS]  # round robin: every batch mixes the tasks
        mixed_batches = [stream[s:s + args.batch_size] for s in range(0, len(stream), args.batch_size)]

        def solo_batch(t, texts):  # tokenized inside the timed region, as the bank does
            data = TokenizedCorpus(bank.tokenizer, texts, args.max_length)
            solo[t].logits(data.collate(range(len(texts))))

        def run_single():
            with torch.no_grad():
                for t in TASKS:
                    for s in range(0, n, args.batch_size):
                        solo_batch(t, per_task[t][s:s + args.batch_size])

        def run_bank_single():
            for t, texts in single_batches:
                bank.logits([(t, x) for x in texts])

        def run_mixed():
            for batch in mixed_batches:
                bank.logits(batch)

        by_length = {t: sorted(range(n), key=lambda i, t=t: len(per_task[t][i])) for t in TASKS}  # as predict sorts

        def run_single_sorted():
            with torch.no_grad():
                for t in TASKS:
                    for s in range(0, n, args.batch_size):
                        solo_batch(t, [per_task[t][i] for i in by_length[t][s:s + args.batch_size]])

        def run_predict():
            bank.predict(stream, batch_size=args.batch_size)

        arms = {"single": run_single, "bank, one task per batch": run_bank_single, "bank, mixed": run_mixed,
                "single, sorted by length": run_single_sorted, "bank.predict, mixed, sorted by length": run_predict}
        best = {k: float("inf") for k in arms}
        run_mixed()  # warm-up
        for _ in range(args.rounds):
            for name, fn in arms.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
        examples = n * len(TASKS)
        results[text_set] = {name: {"seconds": round(s, 3), "examples_per_second": round(examples / s, 2)}
                             for name, s in best.items()}
        results[text_set]["mixed_over_single"] = round(best["single"] / best["bank, mixed"], 3)
        results[text_set]["sorted_mixed_over_sorted_single"] = round(
            best["single, sorted by length"] / best["bank.predict, mixed, sorted by length"], 3)
        results[text_set]["examples"] = examples
        print(text_set, json.dumps(results[text_set]), flush=True)

    command = "python benchmarks/tune_mixed_throughput.py " + " ".join(sys.argv[1:])
    write_json(ROOT / "benchmarks" / "results" / "tune_mixed_throughput.json",
               {"command": command, "args": vars(args), "results": results, "versions": versions()})
    lines = ["# Mixed-task batches vs single-task batches (one frozen e5-small)", "",
             f"Command: `{command}`  ",
             f"Date: {datetime.date.today()}; CPU, {args.threads} torch thread(s), on a 2-core machine shared with "
             "other jobs (each arm's best of the rounds, arms interleaved)  ",
             f"Tasks: {', '.join(f'{t} ({m}, {c} classes)' for t, (m, c) in TASKS.items())}; {args.prompts} soft "
             f"prompts each; batches of {args.batch_size}; max_length {args.max_length}.", "",
             "| texts | single-task (own module) | bank, one task per batch | bank, mixed | mixed / single | "
             "single, sorted by length | bank.predict (mixed, sorted by length) | sorted: mixed / single |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for text_set, r in results.items():
        eps = {k: f"{v['examples_per_second']:.1f}" for k, v in r.items() if isinstance(v, dict)}
        lines.append(f"| {text_set} | {eps['single']} | {eps['bank, one task per batch']} | {eps['bank, mixed']} | "
                     f"{r['mixed_over_single']:.2f} | {eps['single, sorted by length']} | "
                     f"{eps['bank.predict, mixed, sorted by length']} | {r['sorted_mixed_over_sorted_single']:.2f} |")
    lines += ["", "Examples per second (each arm's best round). Target: mixed ≥ 0.9 × single. 'same texts' isolates "
              "the per-example gathers; 'own texts' adds the padding a mixed batch pays when its tasks' texts differ "
              "in length (TNEWS is short, IFLYTEK long), which batching by length (`TaskBank.predict`'s default) "
              "removes."]
    (ROOT / "benchmarks" / "results" / "tune_mixed_throughput.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
