"""Table 6 (M6-Rec section 3.3): multi-segment late interaction against the full model and a 3-layer model.

    python benchmarks/late_interaction.py latency  [--requests 60]     # paper shape, random weights
    python benchmarks/late_interaction.py accuracy [--steps 160]       # CSL, e5-small, resumable
    python benchmarks/late_interaction.py report                        # (both parts also write it)

``latency``: the paper-shape model (24 shared ALBERT layers, hidden 768, 16 heads, E = 128,
random weights) on one CPU thread, batch 1, on real CSL dev requests (each keyword a segment +
the abstract, 128-256 tokens in all, bert-base-chinese pieces). Per request, interleaved: the
full model on the concatenated request; late interaction with L - L' = 3 and 1 through the
``SegmentModel`` the server runs (``TorchSegmentModel``), warm (segments' L'-layer outputs read
from a dict, only ``interact`` runs) and cold (``encode_segments`` on every segment, then
``interact``); a 3-layer model on the concatenated request. Token ids are made outside the timed
region for the concatenated rows (a tokenizer call is ~0.1 ms); the warm path needs none.
CPU time (``time.thread_time``) and wall per request; ratio = full / row, in the same run.

``accuracy``: CSL (keywords + abstract as segments; train = 2/3 of the official dev, dev = the
other 1/3, see benchmarks/clue_provenance.md) from the same start (e5-small) with the same budget:
the full model (``--late-layers 12``: every layer over the whole request, same tokens, same
per-segment positions, so only the mask differs), late interaction L - L' = 3 and 1, and the
first 3 layers of e5-small as the 3-layer model (``--late-layers 3`` of a 3-layer model: L' = 0).
Each row is one ``edgekit finetune`` run (the command is in the results), one thread, niced, run
side by side; rerunning resumes unfinished runs and skips finished ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
CSL = ROOT.parent / "shared" / "data" / "clue" / "csl"
VOCAB = ROOT.parent / "shared" / "data" / "vocab" / "bert-base-chinese" / "vocab.txt"
RUNS = ROOT / "runs" / "late-interaction-csl"
PAPER = {"full": {"latency_ms": 57, "auc": 0.7995}, "3-layer": {"latency_ms": 16, "auc": 0.7566},
         "late 1": {"latency_ms": 10, "auc": 0.7299}, "late 3": {"latency_ms": 16, "auc": 0.7731}}


def machine_note() -> str:
    load = os.getloadavg()
    return (f"{platform.platform()}, {os.cpu_count()} cores, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} "
            "at the start (the machine is shared with other jobs: wall times are noisy, CPU times less so)")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by linear interpolation between order statistics (numpy's default)."""
    import numpy as np

    return float(np.percentile(values, q))


# -- latency -------------------------------------------------------------------------------------------

def csl_requests(n: int, low: int, high: int, tokenizer) -> list[list[str]]:
    """The first ``n`` CSL dev examples (one per abstract) whose segments total ``low``..``high`` tokens."""
    from edgekit.tasks import csl_segments

    out, seen = [], set()
    with open(CSL / "dev.json", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if obj["abst"] in seen:
                continue
            segs = csl_segments(obj)
            total = sum(len(ids) for ids in tokenizer(segs)["input_ids"])
            if low <= total <= high:
                seen.add(obj["abst"])
                out.append(segs)
            if len(out) == n:
                break
    return out


def latency(args) -> dict:
    import numpy as np
    import torch
    from transformers import BertTokenizerFast

    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.late_interaction import LateInteractionClassifier, TorchSegmentModel
    from edgekit.student import StudentConfig, build_student
    from edgekit_device.segments import pack_layout

    torch.set_num_threads(1)
    note = machine_note()
    tok = BertTokenizerFast(vocab_file=str(VOCAB))
    max_seg = 384  # no abstract is cut: every row sees the same tokens
    requests = csl_requests(args.requests, 128, 256, tok)

    def classifier(layers: int, seed: int):
        shape = StudentConfig(num_layers=layers)
        return EarlyExitClassifier.from_student(build_student(shape, tok.vocab_size, pooler=True, seed=seed), 2)

    full = LateInteractionClassifier(classifier(24, 0), 24, 16, max_seg).eval()   # L' = 0: plain full attention
    small = LateInteractionClassifier(classifier(3, 1), 3, 16, max_seg).eval()
    late = {k: TorchSegmentModel(LateInteractionClassifier(classifier(24, 0), k, 16, max_seg), tok, ["0", "1"], f"r{k}")
            for k in (3, 1)}
    # the concatenated request as the full model sees it: one row, per-segment positions and the
    # segment embedding, full attention in every layer (what --late-layers L trains)
    packed = []
    for segs in requests:
        ids = tok(segs)["input_ids"]
        seg_ids, pos = pack_layout([[len(s) for s in ids]])
        packed.append({"input_ids": torch.tensor([[t for s in ids for t in s]]),
                       "segment_ids": torch.from_numpy(seg_ids), "position_ids": torch.from_numpy(pos)})
    warm = {k: [m.encode_segments(segs) for segs in requests] for k, m in late.items()}  # the cache, filled once
    # full attention via forward_one_pass equals the plain classifier on the concatenation (zero segment
    # embedding, L' = 0); check it once so the baseline is the real model, not a slower re-derivation
    with torch.no_grad():
        ref = full.classifier(input_ids=packed[0]["input_ids"], position_ids=packed[0]["position_ids"]).logits
        assert torch.allclose(full.forward_one_pass(packed[0]), ref, atol=1e-4)

    def timed(fn):
        c, w = time.thread_time(), time.perf_counter()
        fn()
        return (time.thread_time() - c) * 1000, (time.perf_counter() - w) * 1000

    rows = {"full (L=24)": lambda i: full.forward_one_pass(packed[i]),
            "late L-L'=3, warm cache": lambda i: late[3].interact([warm[3][i]]),
            "late L-L'=1, warm cache": lambda i: late[1].interact([warm[1][i]]),
            "late L-L'=3, cold (encode + interact)": lambda i: late[3].interact([late[3].encode_segments(requests[i])]),
            "3-layer model": lambda i: small.forward_one_pass(packed[i])}
    times = {name: {"cpu": [], "wall": []} for name in rows}
    with torch.no_grad():
        for name, fn in rows.items():  # warm-up
            fn(0)
        for i in range(len(requests)):  # interleaved rounds: load changes hit every row alike
            for name, fn in rows.items():
                cpu, wall = timed(lambda: fn(i))
                times[name]["cpu"].append(cpu)
                times[name]["wall"].append(wall)
    tokens = [int(p["input_ids"].shape[1]) for p in packed]
    base = {k: percentile(times["full (L=24)"][k], 50) for k in ("cpu", "wall")}
    table = []
    for name in rows:
        t = times[name]
        table.append({"row": name, **{f"{k}_ms_p{q}": round(percentile(t[k], q), 2) for k in ("cpu", "wall")
                                      for q in (50, 99)},
                      "speedup_cpu_p50": round(base["cpu"] / percentile(t["cpu"], 50), 2),
                      "speedup_wall_p50": round(base["wall"] / percentile(t["wall"], 50), 2)})
    late3 = next(r for r in table if r["row"].startswith("late L-L'=3, warm"))
    return {"machine": note, "requests": len(requests), "tokens_per_request": {
                "min": min(tokens), "p50": int(np.median(tokens)), "max": max(tokens)},
            "segments_per_request": round(float(np.mean([len(r) for r in requests])), 2),
            "threads": 1, "rows": table,
            "goal": {"late3_speedup_cpu_p50": late3["speedup_cpu_p50"], "target": 5.0,
                     "pass": late3["speedup_cpu_p50"] >= 5.0, "paper": round(57 / 16, 2)}}


# -- accuracy ------------------------------------------------------------------------------------------

ACC_ROWS = {  # name -> (start, --late-layers; None: a plain classifier on the concatenated text)
    "full": ("e5", 12), "late 3": ("e5", 3), "late 1": ("e5", 1), "3-layer": ("e5-3", 3),
    "full, concatenated text": ("e5", None)}
MAJORITY = 0.5  # CSL dev is balanced: a model that did not train scores 50.00


def three_layer_start(e5: Path, out: Path) -> Path:
    """The first 3 layers of e5-small as a checkpoint directory (written once; the same start as the others)."""
    if (out / "config.json").is_file():
        return out
    from transformers import BertModel

    from edgekit.checkpoint import load_tokenizer, read_meta, save_model_dir

    model = BertModel.from_pretrained(e5, num_hidden_layers=3, add_pooling_layer=False)
    meta = {**read_meta(e5), "note": "the first 3 of e5-small's 12 layers (benchmarks/late_interaction.py)"}
    save_model_dir(model, out, load_tokenizer(e5), meta)
    return out


def run_name(row: str) -> str:
    return {"full, concatenated text": "full-concat"}.get(row, row.replace(" ", "-"))


def running(pid: int) -> bool:
    """Whether ``pid`` is a live ``edgekit finetune`` (not a reused pid)."""
    try:
        return b"finetune" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def accuracy(args) -> dict:
    from edgekit.checkpoint import resolve_teacher

    e5 = Path(resolve_teacher("e5-small")) if not args.model else Path(args.model)
    if not (e5 / "config.json").is_file():
        raise SystemExit(f"no e5-small checkpoint at {e5}; run `edgekit teacher e5-small` first.")
    RUNS.mkdir(parents=True, exist_ok=True)
    starts = {"e5": e5, "e5-3": three_layer_start(e5, RUNS / "e5-small-3layers")}
    procs, commands, waiting = {}, {}, {}
    for name, (start, late_layers) in ACC_ROWS.items():
        out = RUNS / run_name(name)
        # the plain row: keywords joined + the abstract in one text, cut where the segments' tokens end
        shape = (["--late-layers", str(late_layers), "--set", f"late_interaction.max_segment_tokens={args.tokens}"]
                 if late_layers is not None else ["--set", f"task.max_length={args.tokens + 32}"])
        cmd = ["nice", "-n", "10", str(ROOT / ".venv" / "bin" / "edgekit"), "finetune",
               "--model", str(starts[start]), "--task", "csl", "--data-dir", str(CSL), *shape,
               "--max-steps", str(args.steps), "--batch-size", str(args.batch),
               "--lr", str(args.lr), "--eval-every", str(args.steps), "--out", str(out),
               "--set", "finetune.freeze_embeddings=true",
               "--set", f"train.save_every={max(1, args.steps // 4)}", "--set", "train.warmup_ratio=0.1",
               "--set", "task.provenance=" + str(ROOT / "benchmarks" / "clue_provenance.md")]
        commands[name] = " ".join(shlex.quote(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c)
                                  for c in cmd[3:]).replace(".venv/bin/edgekit", "edgekit", 1)
        if (out / "results.json").is_file():
            continue
        pid_file = RUNS / f"{out.name}.pid"
        if pid_file.is_file() and running(int(pid_file.read_text())):
            waiting[name] = int(pid_file.read_text())  # an earlier invocation's run, still going: wait for it
            print(f"waiting for {name} (pid {waiting[name]})", flush=True)
            continue
        from edgekit.io import latest_checkpoint

        if out.exists() and latest_checkpoint(out) is not None:
            cmd.append("--resume")
        elif out.exists():
            cmd.append("--overwrite")  # a run killed before its first checkpoint: edgekit's own directory
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        log = open(RUNS / f"{out.name}.log", "a")
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        pid_file.write_text(str(procs[name].pid))
        print(f"started {name}: {commands[name]}", flush=True)
    for name, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"the '{name}' run failed; see {RUNS / (run_name(name) + '.log')}")
    for name, pid in waiting.items():
        while running(pid):
            time.sleep(30)
        if not (RUNS / run_name(name) / "results.json").is_file():
            raise SystemExit(f"the '{name}' run (pid {pid}) ended without results; rerun this command to resume it.")
    rows = []
    for name in ACC_ROWS:
        res = json.loads((RUNS / run_name(name) / "results.json").read_text())
        rows.append({"row": name, "dev_accuracy": res["dev_accuracy"], "steps": res["steps"],
                     "train_seconds": res["seconds"], "late_interaction": res["late_interaction"],
                     "command": commands[name]})
    # the reference: the better full row (both run every layer over the whole request); a full
    # model at the majority class did not train, and no ratio against it means anything
    full = max(r["dev_accuracy"] for r in rows if r["row"].startswith("full"))
    for r in rows:
        r["ratio_vs_full"] = round(r["dev_accuracy"] / full, 4)
    late3 = next(r for r in rows if r["row"] == "late 3")
    trained = full > MAJORITY + 0.01
    stuck = [r["row"] for r in rows if r["dev_accuracy"] <= MAJORITY + 0.01]
    reading = (f"Did not train at this budget (dev accuracy at the majority class, training loss ~0.69 "
               f"throughout): {', '.join(stuck)}. " if stuck else "") + (
        "The 'full' row is the late-interaction model with L' = 0 (every layer over the packed segments, "
        "positions restarting per segment); 'full, concatenated text' is the plain classifier on keywords + "
        "abstract in one text (positions 0..n), the paper's baseline.")
    return {"machine": machine_note(), "budget": {"steps": args.steps, "batch_size": args.batch, "lr": args.lr,
                                                  "max_segment_tokens": args.tokens, "threads_per_run": 1,
                                                  "word_embeddings": "frozen"},
            "dev_examples": 998, "train_examples": 2002, "rows": rows, "reading": reading,
            "goal": {"late3_over_full": late3["ratio_vs_full"], "target": 0.98,
                     "pass": (late3["ratio_vs_full"] >= 0.98) if trained else None,
                     "note": None if trained else "no full row trained past the majority class (50.00) at this "
                                                  "budget: the ratio says nothing",
                     "paper": round(0.7731 / 0.7995, 4)}}


# -- report --------------------------------------------------------------------------------------------

def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "late_interaction.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    lines = ["# Table 6: multi-segment late interaction (M6-Rec section 3.3)", ""]
    lat = results.get("latency")
    if lat:
        lines += [f"Command: `{lat['command']}`  ", f"Date: {lat['date']}; machine: {lat['machine']}", "",
                  f"Paper shape (24 shared ALBERT layers, hidden 768, 16 heads, E = 128, random weights), 1 thread, "
                  f"batch 1, {lat['requests']} real CSL dev requests ({lat['segments_per_request']} segments, "
                  f"{lat['tokens_per_request']['min']}-{lat['tokens_per_request']['max']} tokens, median "
                  f"{lat['tokens_per_request']['p50']}), rows interleaved per request. Speedup = full / row (p50).", "",
                  "| row | CPU p50 ms | CPU p99 ms | wall p50 ms | wall p99 ms | speedup (CPU) | speedup (wall) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in lat["rows"]:
            lines.append(f"| {r['row']} | {r['cpu_ms_p50']} | {r['cpu_ms_p99']} | {r['wall_ms_p50']} | "
                         f"{r['wall_ms_p99']} | {r['speedup_cpu_p50']}x | {r['speedup_wall_p50']}x |")
        g = lat["goal"]
        lines += ["", f"Goal: late L-L'=3 (warm) ≥ {g['target']}x faster than full: {g['late3_speedup_cpu_p50']}x "
                      f"({'PASS' if g['pass'] else 'MISS'}; the paper: 57/16 = {g['paper']}x).", ""]
    acc = results.get("accuracy")
    if acc:
        b = acc["budget"]
        lines += [f"Command: `{acc['command']}`  ", f"Date: {acc['date']}; machine: {acc['machine']}", "",
                  f"CSL dev accuracy (998 examples), every row fine-tuned from e5-small with the same budget: "
                  f"{b['steps']} steps of batch {b['batch_size']}, lr {b['lr']}, warm-up 10%, word embeddings frozen, "
                  f"segments of at most {b['max_segment_tokens']} tokens (the abstract is cut there), one thread per "
                  "run. Data caveat: CSL here is trained on 2/3 of the official dev and evaluated on the other 1/3 "
                  "(split by abstract; benchmarks/clue_provenance.md): compare only with runs made here.", "",
                  "| row | dev accuracy | / full | train s | command |", "|---|---:|---:|---:|---|"]
        for r in acc["rows"]:
            lines.append(f"| {r['row']} | {100 * r['dev_accuracy']:.2f} | {r['ratio_vs_full']:.3f} | "
                         f"{r['train_seconds']} | `{r['command']}` |")
        g = acc["goal"]
        verdict = {True: "PASS", False: "MISS", None: "NOT ASSESSED: " + str(g.get("note"))}[g["pass"]]
        lines += ["", f"Goal: late L-L'=3 ≥ {g['target']:.0%} of the better full row: {g['late3_over_full']:.3f} "
                      f"({verdict}; the paper: {g['paper']:.3f} in AUC).", ""]
        if acc.get("reading"):
            lines += [acc["reading"], ""]
    (RESULTS / "late_interaction.md").write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["latency", "accuracy", "report"])
    p.add_argument("--requests", type=int, default=60, help="latency: CSL dev requests (rounds)")
    p.add_argument("--model", help="accuracy: the e5-small checkpoint (default: edgekit's teacher cache)")
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tokens", type=int, default=64, help="accuracy: max tokens per segment")
    args = p.parse_args()
    path = RESULTS / "late_interaction.json"
    part = None
    if args.part != "report":
        part = latency(args) if args.part == "latency" else accuracy(args)
        part["command"] = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/late_interaction.py", *sys.argv[1:]])
        part["date"] = datetime.date.today().isoformat()
    # read only now: the other part (hours apart) may have written the file meanwhile
    results = json.loads(path.read_text()) if path.is_file() else {}
    if part is not None:
        results[args.part] = part
    write(results)
    print((RESULTS / "late_interaction.md").read_text())


if __name__ == "__main__":
    main()
