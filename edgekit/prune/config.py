"""The ``edgekit prune`` recipe: model, teacher, data, distill, prune, early_exit and train sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgekit.config import load_config
from edgekit.errors import UserError
from edgekit.prune.schedule import check_sparsity, cubic_sparsity
from edgekit.sections import STAGE_SECTIONS, DataSection, DistillSection, TeacherSection
from edgekit.train import TrainConfig


@dataclass
class PruneSection:
    sparsity: float = 0.8                  # final sparsity s_f of every pruned tensor
    initial_sparsity: float = 0.0          # s_i
    begin_step: int = 0                    # t0
    end_step: int | None = None            # t0 + nΔt; default: train.max_steps − recovery_steps
    # steps trained on at the final sparsity after the schedule ends, so accuracy recovers (the best
    # checkpoint is chosen among them); default: the last quarter of train.max_steps
    recovery_steps: int | None = None
    frequency: int = 10                    # Δt: masks are recomputed every Δt steps
    scope: Literal["layer", "global"] = "layer"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)


@dataclass
class EarlyExitSection:
    enabled: bool = True                   # Σ_k 2k/(L(L+1))·L_k over all exits instead of L_L alone


@dataclass
class PruneConfig:
    model: str | None = None               # the student directory to prune (from `edgekit distill`)
    teacher: TeacherSection = field(default_factory=lambda: TeacherSection(path=None, layer=0))
    data: DataSection = field(default_factory=DataSection)
    distill: DistillSection = field(default_factory=DistillSection)
    prune: PruneSection = field(default_factory=PruneSection)
    early_exit: EarlyExitSection = field(default_factory=EarlyExitSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=2000, lr=5e-5))


def load_prune_config(recipe=None, overrides: dict | None = None) -> PruneConfig:
    return load_config(PruneConfig, recipe, overrides, ignore_sections=STAGE_SECTIONS, stage="prune")


def schedule_end(s: PruneSection, max_steps: int) -> int:
    """The step at which the target sparsity is reached: ``end_step`` if given, else
    max_steps − ``recovery_steps``, else max(t0 + 1, ⌊3/4 · max_steps⌋) (a quarter of training recovers)."""
    if s.end_step is not None and s.recovery_steps is not None:
        raise UserError("prune.end_step and prune.recovery_steps both say when the target sparsity is reached; "
                        "give only one of them.")
    if s.end_step is not None:
        return s.end_step
    if s.recovery_steps is not None:
        if not 0 <= s.recovery_steps < max_steps:
            raise UserError(f"prune.recovery_steps must be between 0 and train.max_steps − 1 ({max_steps - 1}), "
                            f"got {s.recovery_steps}.")
        return max(s.begin_step + 1, max_steps - s.recovery_steps)
    return max(s.begin_step + 1, int(0.75 * max_steps))


def validate_prune_section(s: PruneSection, max_steps: int) -> int:
    """Check a pruning schedule fits ``max_steps`` training steps; returns its end step (t0 + nΔt)."""
    check_sparsity(s.sparsity, "prune.sparsity")
    check_sparsity(s.initial_sparsity, "prune.initial_sparsity")
    end = schedule_end(s, max_steps)
    cubic_sparsity(0, s.initial_sparsity, s.sparsity, s.begin_step, end, s.frequency)  # validates the schedule
    if end > max_steps:
        raise UserError(f"prune.end_step {end} is after the last training step {max_steps}; "
                        "lower prune.end_step or raise train.max_steps so the target sparsity is reached.")
    return end


def validate_prune_config(cfg: PruneConfig) -> int:
    """Check the schedule fits the training run; returns its end step (t0 + nΔt)."""
    return validate_prune_section(cfg.prune, cfg.train.max_steps)
