"""The early-exit classifier: an ALBERT classifier that can stop at any layer (M6-Rec section 3.5).

Layers above the exit are never computed: ``encode_to_layer`` replays what ``AlbertModel.forward``
does with the pieces of ``edgekit.albert`` (embeddings, projection to the hidden size, the padding
mask that transformers prepares for the model's attention implementation) and applies the shared
layer only k times. Because ALBERT shares one layer's weights across all depths, a model trained
this way is still a standard ``AlbertForSequenceClassification`` checkpoint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AlbertForSequenceClassification, AlbertModel

from edgekit.albert import POOLINGS, albert_of, apply_layer, check_layer, classifier_head, embed, layer_mask, pooling_of
from edgekit.early_exit.losses import prediction_entropy, weighted_exit_loss
from edgekit.errors import UserError

__all__ = ["EarlyExitClassifier", "EarlyExitOutput", "encode_to_layer"]


def _check_attention_mask(mask2d, input_ids: torch.Tensor) -> None:
    if mask2d is not None and tuple(mask2d.shape) != tuple(input_ids.shape):
        raise UserError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                        f"{tuple(mask2d.shape)}; pass the tokenizer's 2D padding mask.")


def encode_to_layer(albert_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    token_type_ids: torch.Tensor | None = None,
                    exit_layer: int | None = None) -> list[torch.Tensor]:
    """Hidden states (B, T, H) of layers 1..``exit_layer``, computing no layer above ``exit_layer``.

    Equal to ``AlbertModel(..., output_hidden_states=True).hidden_states[1:exit_layer + 1]``;
    ``exit_layer=None`` runs every layer. ``albert_model`` may also be a task model with an ALBERT base.
    """
    albert = albert_of(albert_model)
    depth = albert.config.num_hidden_layers
    exit_layer = depth if exit_layer is None else check_layer("exit_layer", exit_layer, depth)
    _check_attention_mask(attention_mask, input_ids)
    hidden = embed(albert, input_ids, token_type_ids)
    mask = layer_mask(albert, hidden, attention_mask)
    states = []
    for index in range(exit_layer):
        hidden = apply_layer(albert, index, hidden, mask)
        states.append(hidden)
    return states


@dataclass
class EarlyExitOutput:
    """``logits``: (K, B, C), exit k at index k-1. ``loss``: the training loss when labels were given.
    ``exit_losses``: (K,) cross-entropy of each exit."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    exit_losses: torch.Tensor | None = None


class EarlyExitClassifier(nn.Module):
    """A sequence classifier that can stop at any layer, wrapping ``AlbertForSequenceClassification``.

    The head shared by all exits is the inner model's own: pooler + tanh + dropout + classifier on
    the [CLS] (first) position of the exit layer's output, so exiting at the last layer gives
    exactly the inner model's logits. With ``pooling == "mean"`` (``config.classifier_pooling``)
    the head reads the masked mean of the exit layer's tokens instead, without the pooler
    (``edgekit.albert.classifier_head``). Save and load the inner model with ``save_pretrained`` /
    ``from_pretrained``; the checkpoint is a standard Hugging Face one, plus that setting.
    """

    def __init__(self, model: AlbertForSequenceClassification):
        super().__init__()
        if not isinstance(model, AlbertForSequenceClassification):
            raise UserError(f"EarlyExitClassifier wraps an AlbertForSequenceClassification, got "
                            f"{type(model).__name__}; use EarlyExitClassifier.from_student for a bare student.")
        self.model = model

    # -- construction and checkpoints

    @classmethod
    def from_student(cls, student: AlbertModel, num_labels: int) -> EarlyExitClassifier:
        """A classifier over ``num_labels`` classes whose encoder (and pooler) are ``student``'s weights."""
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise UserError(f"num_labels must be an integer of at least 2, got {num_labels!r}; "
                            "early-exit classification needs two or more classes.")
        config = copy.deepcopy(student.config)
        config.num_labels = num_labels
        # The student's dropout setting (StudentConfig.dropout) governs the head too.
        config.classifier_dropout_prob = config.hidden_dropout_prob
        model = AlbertForSequenceClassification(config)
        missing, unexpected = model.albert.load_state_dict(student.state_dict(), strict=False)
        if unexpected or any(not name.startswith("pooler") for name in missing):
            raise UserError(f"The student's weights do not fit an ALBERT classifier (missing {missing}, "
                            f"unexpected {unexpected}); build the student with edgekit.student.build_student.")
        return cls(model)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> EarlyExitClassifier:
        return cls(AlbertForSequenceClassification.from_pretrained(path, **kwargs))

    def save_pretrained(self, path, **kwargs) -> None:
        self.model.save_pretrained(path, **kwargs)

    @property
    def depth(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def pooling(self) -> str:
        """``cls`` or ``mean``: how the head reads a layer's hidden states (saved in config.json)."""
        return pooling_of(self.model.config)

    @pooling.setter
    def pooling(self, value: str) -> None:
        if value not in POOLINGS:
            raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {value!r}.")
        self.model.config.classifier_pooling = value

    # -- the shared head

    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C) from one layer's hidden states (B, T, H), as the inner model computes them.

        ``attention_mask`` (B, T) matters for mean pooling only (None: every position is a token)."""
        return classifier_head(self.model, hidden, attention_mask)

    # -- training and fixed budgets

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                exit_layer: int | None = None, early_exit: bool = True) -> EarlyExitOutput:
        """Logits of every exit 1..``exit_layer`` (default: all layers) and, given labels, the loss.

        The loss is ``weighted_exit_loss`` of the exits' cross-entropies (weights over the K exits
        computed, so they sum to 1); ``early_exit=False`` trains the last computed exit only.
        """
        states = encode_to_layer(self.model.albert, input_ids, attention_mask, token_type_ids, exit_layer)
        logits = torch.stack([self.head(hidden, attention_mask) for hidden in states])
        if labels is None:
            return EarlyExitOutput(logits=logits)
        if labels.shape != logits.shape[1:2]:
            raise UserError(f"labels must hold one class index per example, shape {tuple(logits.shape[1:2])}, "
                            f"got {tuple(labels.shape)}; pass a 1D tensor of class indices.")
        exit_losses = torch.stack([F.cross_entropy(exit_logits, labels) for exit_logits in logits])
        loss = weighted_exit_loss(exit_losses) if early_exit else exit_losses[-1]
        return EarlyExitOutput(logits=logits, loss=loss, exit_losses=exit_losses)

    @torch.no_grad()
    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, exit_layer: int | None = None) -> torch.Tensor:
        """Class predictions (B,) of a fixed budget: every example exits at ``exit_layer``."""
        exit_layer = self.depth if exit_layer is None else check_layer("exit_layer", exit_layer, self.depth)
        states = encode_to_layer(self.model.albert, input_ids, attention_mask, token_type_ids, exit_layer)
        return self.head(states[-1], attention_mask).argmax(dim=-1)

    # -- dynamic exit

    @torch.no_grad()
    def predict_dynamic(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        token_type_ids: torch.Tensor | None = None, mode: str = "patience", patience: int = 2,
                        entropy_threshold: float = 0.1, max_layer: int | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example early exit: (predictions (B,), exit layer (B,), logits at the exit (B, C)).

        ``mode="patience"`` (PABEE): a counter grows by one at each layer whose prediction equals
        the previous layer's and resets otherwise; the example exits when it reaches ``patience``,
        i.e. after ``patience + 1`` agreeing layers in a row (PABEE's definition).
        ``mode="entropy"`` (DeeBERT): the example exits at the first layer whose prediction entropy
        (``prediction_entropy``, nats) is below ``entropy_threshold``.
        Either way an example that has not exited by ``max_layer`` (default: the depth) exits there.

        Examples that have exited are dropped from the running batch, so deeper layers only compute
        the examples still undecided; trailing padding that no remaining example needs is dropped too.
        """
        max_layer = self.depth if max_layer is None else check_layer("max_layer", max_layer, self.depth)
        if mode not in ("patience", "entropy"):
            raise UserError(f"mode must be 'patience' (PABEE) or 'entropy' (DeeBERT), got {mode!r}.")
        if mode == "patience" and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise UserError(f"patience must be an integer of at least 1, got {patience!r}; "
                            "it counts how many layers in a row must repeat the previous prediction.")
        if mode == "entropy" and not entropy_threshold > 0:
            raise UserError(f"entropy_threshold must be greater than 0, got {entropy_threshold!r}; "
                            "an entropy is never negative, so a threshold of 0 or less never exits.")
        _check_attention_mask(attention_mask, input_ids)

        albert = self.model.albert
        batch = input_ids.shape[0]
        device = input_ids.device
        exit_layers = torch.zeros(batch, dtype=torch.long, device=device)
        exit_logits = torch.zeros(batch, self.model.config.num_labels, device=device)

        # Row r of the running batch is example rows[r] of the input.
        rows = torch.arange(batch, device=device)
        hidden = embed(albert, input_ids, token_type_ids)
        mask2d = attention_mask
        previous = torch.full((batch,), -1, dtype=torch.long, device=device)
        counter = torch.zeros(batch, dtype=torch.long, device=device)

        for index in range(max_layer):
            layer = index + 1
            hidden = apply_layer(albert, index, hidden, layer_mask(albert, hidden, mask2d))
            logits = self.head(hidden, mask2d)
            prediction = logits.argmax(dim=-1)
            if layer == max_layer:
                done = torch.ones_like(prediction, dtype=torch.bool)
            elif mode == "patience":
                counter = torch.where(prediction == previous, counter + 1, torch.zeros_like(counter))
                previous = prediction
                done = counter >= patience
            else:
                done = prediction_entropy(logits) < entropy_threshold

            exit_layers[rows[done]] = layer
            exit_logits[rows[done]] = logits[done].to(exit_logits.dtype)
            if done.all():
                break
            keep = ~done
            rows, hidden, previous, counter = rows[keep], hidden[keep], previous[keep], counter[keep]
            if mask2d is not None:
                mask2d = mask2d[keep]
                # Padded keys are masked out, so columns that every remaining example pads can go.
                used = mask2d.bool().any(dim=0).nonzero()
                if len(used):
                    length = int(used.max()) + 1
                    hidden, mask2d = hidden[:, :length], mask2d[:, :length]

        return exit_logits.argmax(dim=-1), exit_layers, exit_logits
