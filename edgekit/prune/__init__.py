"""Gradual magnitude pruning (M6-Rec section 3.5): a cubic schedule, a pruner that owns masks, a report.

The schedule is a pure function of the step, the pruner owns the masks, and the training loop owns
both; see ``edgekit.prune.pruner`` for the loop and why this is not built on ``torch.ao.pruning``.
"""

from edgekit.prune.pruner import MagnitudePruner, magnitude_mask, num_pruned
from edgekit.prune.report import plot_loss, plot_schedule, sparsity_report, write_report
from edgekit.prune.schedule import check_sparsity, cubic_sparsity

__all__ = [
    "MagnitudePruner",
    "check_sparsity",
    "cubic_sparsity",
    "magnitude_mask",
    "num_pruned",
    "plot_loss",
    "plot_schedule",
    "sparsity_report",
    "write_report",
]
