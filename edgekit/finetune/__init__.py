"""``edgekit finetune``: full fine-tuning on a classification task, all exits trained.

The entry point is ``finetune(cfg, out)`` (``edgekit.finetune.stage``); its recipe is
``FinetuneConfig`` (``edgekit.finetune.config``).

Python API::

    from edgekit.finetune import load_finetune_config, finetune
    cfg = load_finetune_config(None, {"model": "runs/prune", "task": {"name": "tnews", "data_dir": "data/tnews"}})
    result = finetune(cfg, out="runs/finetune")
"""

from edgekit.finetune.config import FinetuneConfig, load_finetune_config
from edgekit.finetune.stage import ClassifierModule, EvalCallback, build_classifier, finetune, freeze_word_embeddings

__all__ = [
    "ClassifierModule",
    "EvalCallback",
    "FinetuneConfig",
    "build_classifier",
    "finetune",
    "freeze_word_embeddings",
    "load_finetune_config",
]
