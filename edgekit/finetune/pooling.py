"""The classification head's pooling: ``finetune.pooling`` = ``cls`` | ``mean`` | ``auto``.

``cls`` reads the first position through the model's pooler (dense + tanh), what Hugging Face's
``...ForSequenceClassification`` heads do; ``mean`` feeds the masked mean of the last layer's
tokens (``edgekit.albert.mean_pool``) to the classifier directly, without the pooler. ``auto``
is what the checkpoint was trained with (``checkpoint_pooling``): e5 was trained with mean pooling
and its import has no pooler weights (they are written as zeros), so a [CLS] head would start from
a constant; edgekit's students have no such history and default to ``cls``.

The choice is saved in the fine-tuned checkpoint's ``config.json`` (``classifier_pooling``, the
name ModernBERT's config uses for the same thing) and ``edgekit.json`` (``pooling``), and every
edgekit loader honours it: ``EarlyExitClassifier`` for ALBERT, ``load_sequence_classifier`` for
other encoders (a plain ``AutoModelForSequenceClassification`` would pool [CLS]).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.albert import POOLINGS, mean_pool, pooling_of
from edgekit.errors import UserError

__all__ = ["POOLING_CHOICES", "MeanPooledClassifier", "checkpoint_pooling", "load_sequence_classifier",
           "resolve_pooling", "with_pooling"]

POOLING_CHOICES = ("auto",) + POOLINGS


def checkpoint_pooling(model_dir) -> str:
    """The pooling a checkpoint was trained with: ``classifier_pooling`` in its config.json, else
    ``pooling`` in its edgekit.json (e5 imports written before config.json recorded it), else ``cls``."""
    from edgekit.checkpoint import load_config_of, read_meta

    config = load_config_of(model_dir)
    if getattr(config, "classifier_pooling", None):
        return pooling_of(config)
    recorded = read_meta(model_dir).get("pooling")
    return recorded if recorded in POOLINGS else "cls"


def resolve_pooling(choice, model_dir) -> str:
    """``cls`` or ``mean`` for ``finetune.pooling`` = ``choice``; ``auto`` asks the checkpoint."""
    if choice not in POOLING_CHOICES:
        raise UserError(f"finetune.pooling must be one of {', '.join(POOLING_CHOICES)} (auto: what the checkpoint "
                        f"was trained with), got {choice!r}.")
    return checkpoint_pooling(model_dir) if choice == "auto" else choice


class MeanPooledClassifier(nn.Module):
    """A Hugging Face sequence classifier whose head reads the masked token mean instead of [CLS].

    logits = classifier(dropout(mean_pool(encoder(x).last_hidden_state, attention_mask))); the
    model's pooler is kept in the checkpoint but not used. Needs a head that is one linear layer
    over the pooled vector (BERT, e5, ELECTRA-small-style ``classifier: nn.Linear``).
    ``save_pretrained`` writes the wrapped model, with ``classifier_pooling = "mean"`` in its config.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(getattr(model, "classifier", None), nn.Linear):
            raise UserError(f"mean pooling needs a classifier that is one linear layer over the pooled vector "
                            f"(BERT-style); {type(model).__name__} has a different head: set finetune.pooling "
                            "to cls for this model.")
        self.model = model
        self.model.config.classifier_pooling = "mean"

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        kw = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        hidden = self.model.base_model(input_ids, **kw).last_hidden_state
        dropout = getattr(self.model, "dropout", None) or nn.Identity()
        logits = self.model.classifier(dropout(mean_pool(hidden, attention_mask)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, path, **kwargs) -> None:
        self.model.save_pretrained(path, **kwargs)


def with_pooling(classifier: nn.Module, pooling: str) -> nn.Module:
    """``classifier`` set to pool by ``pooling``: an ``EarlyExitClassifier`` records it in its config;
    another Hugging Face classifier is wrapped in ``MeanPooledClassifier`` for ``mean``."""
    if pooling not in POOLINGS:
        raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
    if hasattr(classifier, "predict_dynamic"):  # EarlyExitClassifier: its head reads the config
        classifier.pooling = pooling
        return classifier
    if pooling == "mean":
        return MeanPooledClassifier(classifier)
    classifier.config.classifier_pooling = "cls"
    return classifier


def load_sequence_classifier(path) -> nn.Module:
    """A fine-tuned non-ALBERT classifier from ``path``, pooling as its config.json says."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(Path(path))
    return with_pooling(model, pooling_of(model.config))
