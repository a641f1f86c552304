"""The ``edgekit finetune`` recipe: model, task, finetune and train sections."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgekit.config import load_config
from edgekit.errors import UserError
from edgekit.prune.config import PruneSection
from edgekit.sections import STAGE_SECTIONS, LateInteractionSection, TaskSection  # noqa: F401 (re-exported)
from edgekit.train import TrainConfig


@dataclass
class FinetuneSection:
    early_exit: bool = True         # Σ_k 2k/(L(L+1))·CE_k over all exits (students only)
    eval_every: int = 200
    freeze_embeddings: bool = False  # keep the token embedding table fixed (large-vocabulary teachers: faster)
    keep_sparsity: bool = True       # a pruned model keeps its zeros (gradients masked, weights re-zeroed)
    pooling: str = "auto"            # the head reads [CLS] (cls) or the token mean (mean); auto: the checkpoint's own
    lr: list[float] = field(default_factory=list)  # a learning-rate sweep: one run per value, the best on dev kept
    bucket_batches: int = 50         # batches per length-sorted pool (similar lengths, less padding); 0: random
    # task-level distillation: soft labels of a fine-tuned teacher (finetune/task_distill.py)
    teacher_run: str | None = None   # the teacher's `edgekit finetune` run directory or checkpoint
    alpha: float = 0.5               # α·T²·KL(teacher ‖ student) + (1−α)·CE(labels)
    temperature: float = 2.0         # T
    unlabeled: list[str] = field(default_factory=list)  # in-domain texts without labels (soft labels only)
    unlabeled_text_field: str = "sentence,text,abst"  # or "task": each line read as the task reads examples
    max_unlabeled: int | None = None
    logit_cache: str | None = None   # where teacher logits are cached (default: EDGEKIT_HOME/teacher-logits)
    # task-level gradual magnitude pruning during fine-tuning (edgekit/prune's schedule and pruner)
    prune: PruneSection | None = None


@dataclass
class FinetuneTrainConfig(TrainConfig):
    max_steps: int | None = None     # None: train.epochs passes over the train set
    lr: float | None = None          # None: 1e-4 for small models, 3e-5 base-size (finetune/schedule.py)
    warmup_ratio: float = 0.1
    save_every: int = 200
    epochs: float | None = None      # None: the task's default (3; CSL 5)

    def validate(self) -> None:
        if self.epochs is not None and not self.epochs > 0:
            raise UserError(f"train.epochs must be positive, got {self.epochs}.")
        # unset steps and lr are filled in once the data and the model are known
        TrainConfig.validate(replace(self, max_steps=1 if self.max_steps is None else self.max_steps,
                                     lr=1.0 if self.lr is None else self.lr))


@dataclass
class FinetuneConfig:
    model: str | None = None
    task: TaskSection = field(default_factory=TaskSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    late_interaction: LateInteractionSection = field(default_factory=LateInteractionSection)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)


def load_finetune_config(recipe=None, overrides: dict | None = None) -> FinetuneConfig:
    return load_config(FinetuneConfig, recipe, overrides, ignore_sections=STAGE_SECTIONS, stage="finetune")
