"""``edgekit prune``: gradual magnitude pruning (M6-Rec section 3.5) with the weighted early-exit distillation loss.

The entry point is ``prune(cfg, out)`` (``edgekit.prune.stage``); its recipe is ``PruneConfig``
(``edgekit.prune.config``). The cubic schedule is a pure function of the step (``schedule``), the
pruner owns the masks (``pruner``), and the training loop owns both; see ``edgekit.prune.pruner``
for the loop and why this is not built on ``torch.ao.pruning``.

Python API::

    from edgekit.prune import load_prune_config, prune
    cfg = load_prune_config(None, {"model": "runs/distill", "prune": {"sparsity": 0.8}})
    prune(cfg, out="runs/prune")
"""

from edgekit.prune.config import PruneConfig, load_prune_config, validate_prune_config
from edgekit.prune.pruner import MagnitudePruner, magnitude_mask, num_pruned
from edgekit.prune.report import plot_loss, plot_schedule, sparsity_report, write_report
from edgekit.prune.schedule import check_sparsity, cubic_sparsity
from edgekit.prune.stage import fixed_mask_callback, prune

__all__ = [
    "MagnitudePruner",
    "PruneConfig",
    "check_sparsity",
    "cubic_sparsity",
    "fixed_mask_callback",
    "load_prune_config",
    "magnitude_mask",
    "num_pruned",
    "plot_loss",
    "plot_schedule",
    "prune",
    "sparsity_report",
    "validate_prune_config",
    "write_report",
]
