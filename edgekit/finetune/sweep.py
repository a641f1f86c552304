"""A learning-rate sweep: ``finetune.lr: [2e-5, 5e-5, 1e-4]`` (or ``--lr 2e-5,5e-5,1e-4``).

Small models are sensitive to the learning rate, so the sweep fine-tunes once per rate, each into
``OUT/lr-<rate>`` (an ordinary finetune run directory), and keeps the one with the best dev accuracy
as ``OUT/model``; ``OUT/results.json`` is the best run's results plus every rate's (``sweep``). It is
resumable: a rate whose run finished is read, not rerun, and an interrupted one continues.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from edgekit.errors import UserError
from edgekit.io import RunDir, atomic_dir, check_run_dir, read_json

RESULTS = "results.json"


def rate_dir(out: Path, lr: float) -> Path:
    return Path(out) / f"lr-{lr:g}"


def pick_best(rows: list[dict]) -> dict:
    """The row with the highest ``dev_accuracy``; on a tie the first (the order the recipe lists)."""
    return max(rows, key=lambda r: r["dev_accuracy"])  # max keeps the first of equals


def run_sweep(cfg, out, run_one, resume: bool = False, stop_after_step: int | None = None,
              command: str | None = None, overwrite: bool = False) -> dict:
    """Fine-tune once per ``cfg.finetune.lr`` with ``run_one`` (``finetune``); keep the best on dev."""
    rates = list(cfg.finetune.lr)
    if any(not lr > 0 for lr in rates):
        raise UserError(f"finetune.lr must list positive learning rates, got {rates}.")
    if len(set(rates)) != len(rates):
        raise UserError(f"finetune.lr lists a learning rate twice ({rates}); list each rate once.")
    out = Path(out)
    check_run_dir(out, resume, overwrite, "finetune-run", skips_finished_work=True)
    started = [rate_dir(out, lr) for lr in rates if rate_dir(out, lr).is_dir()]
    if started and not resume and not overwrite:
        raise UserError(f"'{out}' holds an unfinished learning-rate sweep; pass --resume to continue it (finished "
                        "rates are not rerun), --overwrite to start again, or choose another --out.")
    run = RunDir(out, command=command, kind="finetune-run")
    rows = []
    for lr in rates:
        sub = rate_dir(out, lr)
        if (sub / RESULTS).is_file():
            result = read_json(sub / RESULTS)
            print(f"finetune sweep: lr {lr:g} finished earlier (dev accuracy {100 * result['dev_accuracy']:.2f}); "
                  "not rerun")
        else:
            one = copy.deepcopy(cfg)
            one.finetune.lr = []
            one.train.lr = lr
            print(f"finetune sweep: lr {lr:g} -> {sub}")
            result = run_one(one, sub, resume=sub.is_dir() and any(sub.iterdir()), stop_after_step=stop_after_step,
                             command=command)
            if result.get("interrupted"):
                return {**result, "run_dir": str(out)}
        rows.append({"lr": lr, "dev_accuracy": result["dev_accuracy"], "best_step": result["best_step"],
                     "steps": result["steps"], "run_dir": str(sub), "results": result})
    best = pick_best(rows)
    with atomic_dir(out / "model", overwrite=True) as tmp:  # the sweep's own model (a kill may have left it)
        shutil.copytree(Path(best["run_dir"]) / "model", tmp, dirs_exist_ok=True)
    results = {**best["results"], "lr": best["lr"], "model_dir": str(out / "model"),
               "sweep": [{k: v for k, v in r.items() if k != "results"} for r in rows]}
    run.write_config({"sweep": rates, "runs": [r["run_dir"] for r in rows]})
    run.write_results(results)
    print("finetune sweep: " + ", ".join(f"lr {r['lr']:g} {100 * r['dev_accuracy']:.2f}" for r in rows)
          + f"; kept lr {best['lr']:g}")
    return results
