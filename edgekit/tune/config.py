"""The ``edgekit tune`` recipe: model, task, tune and train sections.

Defaults from M6-Rec Appendix A.2: learning rate 5e-5 for fine-tuning and 1e-4 for the
prompt-like methods (LoRA, not in the paper, takes 1e-4 too); global batch 128 (32 × 4 gradient
accumulation steps); soft prompts so that a task's parameters are about 1% of the model's,
typically 128 (``options.default_prompt_count``); adapter rank d/H.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgekit.config import load_config
from edgekit.sections import TaskSection
from edgekit.sections import STAGE_SECTIONS
from edgekit.train import TrainConfig

Method = Literal["finetune", "lora", "prompt", "option", "option-adapter"]
LEARNING_RATES = {"finetune": 5e-5}  # A.2; every other method: 1e-4
PROMPT_LIKE_LR = 1e-4


@dataclass
class TuneSection:
    method: Method = "option-adapter"
    prompts: int | None = None                 # N soft prompts, the C options included; None: ~1% of the model, ≤ 128
    pooling: str = "auto"                      # summary vector: cls, mean, or auto (what the checkpoint was trained with)
    adapter_rank: int | None = None            # r; None: hidden size / attention heads (A.2)
    # an adapter per depth or one for all depths; auto: shared on ALBERT (whose one layer is applied L times,
    # so per-depth would hold L adapters: 19% of the paper-shape student), per-depth elsewhere
    adapter_sharing: Literal["auto", "per-depth", "shared"] = "auto"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=list)  # module names; empty: query and value
    freeze_embeddings: bool = False            # finetune: keep the token embedding table fixed (faster on CPU)
    eval_every: int = 100


@dataclass
class TuneTrainConfig(TrainConfig):
    lr: float | None = None                    # None: 5e-5 for finetune, 1e-4 for the others (A.2)
    batch_size: int = 32
    grad_accum: int = 4                        # global batch 128 (A.2)
    max_steps: int = 1000
    save_every: int = 200


@dataclass
class TuneConfig:
    model: str | None = None
    task: TaskSection = field(default_factory=TaskSection)
    tune: TuneSection = field(default_factory=TuneSection)
    train: TuneTrainConfig = field(default_factory=TuneTrainConfig)


def load_tune_config(recipe=None, overrides: dict | None = None) -> TuneConfig:
    cfg = load_config(TuneConfig, recipe, overrides, ignore_sections=STAGE_SECTIONS, stage="tune")
    if cfg.train.lr is None:
        cfg.train.lr = LEARNING_RATES.get(cfg.tune.method, PROMPT_LIKE_LR)
    return cfg
