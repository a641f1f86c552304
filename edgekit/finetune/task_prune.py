"""Task-level pruning: gradual magnitude pruning during fine-tuning (``finetune.prune``), on the task
loss (with a teacher's soft labels when ``finetune.teacher_run`` is set).

The same cubic schedule, pruner and callback as ``edgekit prune`` (``edgekit.prune``); only the loss
differs. The new task head (pooler, classifier) stays dense, as fine-tuning a pruned model keeps it.
Until the target sparsity is reached a dev accuracy is not a candidate for the best checkpoint: the
model kept is always at the target sparsity, chosen among the recovery steps after the schedule ends
(``prune.recovery_steps``; default the last quarter of training).
"""

from __future__ import annotations

import re

from edgekit.prune.config import PruneSection, validate_prune_section
from edgekit.prune.pruner import MagnitudePruner
from edgekit.prune.stage import PruningCallback

HEAD = (r"pooler", r"classifier")


def task_pruning(model, section: PruneSection, max_steps: int) -> tuple[PruningCallback, int]:
    """A ``PruningCallback`` over ``model``'s embedding and linear weights (the head excluded) and the
    step at which it reaches ``section.sparsity``."""
    end = validate_prune_section(section, max_steps)
    names = [n for n, _ in model.named_parameters()]
    head = [p for p in HEAD if any(re.search(p, n) for n in names)]
    pruner = MagnitudePruner(scope=section.scope, include=section.include or None,
                             exclude=list(section.exclude) + [p for p in head if p not in section.exclude] or None)
    pruner.prepare(model)
    return PruningCallback(pruner, section, end), end
