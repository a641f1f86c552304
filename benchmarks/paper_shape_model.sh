#!/usr/bin/env bash
# The trained paper-shape model the phone benchmarks measure (bundle_size.py, int8_depth): M6-Edge shapes
# (24 shared layers, 16 heads, hidden 768, E=128) distilled from e5-small on TNEWS text, pruned to 80% with the
# early-exit loss, fine-tuned on TNEWS, all on this 2-core CPU. Steps are what a shared 2-core CPU allowed in one
# session (2026-12-01): distillation ran inside `edgekit run recipes/m6_edge_cpu.yaml` (a 150-step schedule) and was
# stopped after its step-125 checkpoint; pruning (24 steps) and TNEWS fine-tuning (150 steps) then ran as separate stages.
# Each command resumes where it stopped, and a finished stage is skipped (re-run this script).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/m6-edge-cpu}
DISTILLED=$RUN/distill/checkpoints/step-0000125/model
if [ ! -d "$DISTILLED" ]; then
  # the first 125 steps of the recipe's distillation (its schedule is 150 steps; stop after step 125 is saved)
  edgekit distill --recipe recipes/m6_edge_cpu.yaml --teacher e5-small --out $RUN/distill --resume || true
fi
[ -f $RUN/prune-24/results.json ] || edgekit prune --recipe recipes/m6_edge_cpu.yaml --model $DISTILLED --out $RUN/prune-24 \
  --max-steps 24 --end-step 16 --frequency 4 --resume
[ -f $RUN/tnews-150/results.json ] || edgekit finetune --recipe recipes/m6_edge_cpu.yaml --model $RUN/prune-24 --task tnews --data-dir ../shared/data/clue/tnews \
  --out $RUN/tnews-150 --max-steps 150 --eval-every 150 --set task.max_length=64 --set task.max_eval_examples=1000 --resume
# The same fine-tuning with a mean-pooled head (no 768x768 pooler in the bundle): what bundle_size.md measures now.
[ -f $RUN/tnews-150-mean/results.json ] || edgekit finetune --recipe recipes/m6_edge_cpu.yaml --model $RUN/prune-24 --task tnews --data-dir ../shared/data/clue/tnews \
  --out $RUN/tnews-150-mean --max-steps 150 --eval-every 150 --set task.max_length=64 --set task.max_eval_examples=1000 \
  --set finetune.pooling=mean --resume
