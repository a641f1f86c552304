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
    end_step: int | None = None            # t0 + nΔt; default: 3/4 of train.max_steps
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


def validate_prune_config(cfg: PruneConfig) -> int:
    """Check the schedule fits the training run; returns its end step (t0 + nΔt)."""
    s = cfg.prune
    check_sparsity(s.sparsity, "prune.sparsity")
    check_sparsity(s.initial_sparsity, "prune.initial_sparsity")
    end = s.end_step if s.end_step is not None else max(s.begin_step + 1, int(0.75 * cfg.train.max_steps))
    cubic_sparsity(0, s.initial_sparsity, s.sparsity, s.begin_step, end, s.frequency)  # validates the schedule
    if end > cfg.train.max_steps:
        raise UserError(f"prune.end_step {end} is after the last training step {cfg.train.max_steps}; "
                        "lower prune.end_step or raise train.max_steps so the target sparsity is reached.")
    return end
