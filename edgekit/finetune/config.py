"""The ``edgekit finetune`` recipe: model, task, finetune and train sections."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.config import load_config
from edgekit.sections import STAGE_SECTIONS
from edgekit.train import TrainConfig


@dataclass
class TaskSection:
    name: str = "tnews"
    data_dir: str | None = None
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    test_file: str | None = None       # a labelled test split (file stem or path); sentiment has one built in
    provenance: str | None = None      # a file describing the data (default: PROVENANCE.md in data_dir)
    max_length: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None


@dataclass
class FinetuneSection:
    early_exit: bool = True         # Σ_k 2k/(L(L+1))·CE_k over all exits (students only)
    eval_every: int = 200
    freeze_embeddings: bool = False  # keep the token embedding table fixed (large-vocabulary teachers: faster)
    keep_sparsity: bool = True       # a pruned model keeps its zeros (gradients masked, weights re-zeroed)
    pooling: str = "auto"            # the head reads [CLS] (cls) or the token mean (mean); auto: the checkpoint's own


@dataclass
class FinetuneConfig:
    model: str | None = None
    task: TaskSection = field(default_factory=TaskSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1000, lr=5e-5, save_every=200))


def load_finetune_config(recipe=None, overrides: dict | None = None) -> FinetuneConfig:
    return load_config(FinetuneConfig, recipe, overrides, ignore_sections=STAGE_SECTIONS, stage="finetune")
