"""Weighted early exit for the ALBERT student (M6-Rec section 3.5).

Every layer is an exit: exiting at layer k means the output head reads layer k's output instead
of the last layer's, and the same head serves every exit. Training optimizes the PABEE-weighted
sum of the per-exit losses (``exit_weights``, ``weighted_exit_loss``); inference either spends a
fixed budget of k layers (``predict``) or decides per example when to stop (``predict_dynamic``:
PABEE's patience or DeeBERT's entropy threshold).

Layers above the exit are never computed: ``encode_to_layer`` replays what
``AlbertModel.forward`` does (embeddings, projection to the hidden size, the padding mask that
transformers prepares for the model's attention implementation) and applies the shared layer only
k times. Because ALBERT shares one layer's weights across all depths, a model trained this way is
still a standard ``AlbertForSequenceClassification`` checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AlbertForSequenceClassification, AlbertModel
from transformers.masking_utils import create_bidirectional_mask

from edgekit.errors import UserError

__all__ = [
    "EarlyExitClassifier",
    "EarlyExitOutput",
    "encode_to_layer",
    "exit_weights",
    "prediction_entropy",
    "weighted_exit_loss",
]


# ---------------------------------------------------------------------------------------------
# The paper's math


def exit_weights(num_layers: int) -> torch.Tensor:
    r"""Weights of the per-exit losses: :math:`w_k = \frac{2k}{L(L+1)}` for :math:`k = 1..L`.

    M6-Rec section 3.5 follows PABEE (Zhou et al. 2020, "BERT Loses Patience", ref [67] of the
    paper), whose loss is :math:`\sum_k k \mathcal{L}_k / \sum_k k`; since
    :math:`\sum_{k=1}^L k = L(L+1)/2` the weights are :math:`2k / (L(L+1))`, grow linearly with
    depth and sum to 1. The paper prints the denominator as :math:`k(k+1)`, a typo:
    :math:`2k / (k(k+1)) = 2/(k+1)` does not sum to 1.

    For L=4 the weights are [0.1, 0.2, 0.3, 0.4].
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise UserError(f"The number of exits must be a positive integer, got {num_layers!r}; "
                        "pass the number of layers the loss covers.")
    k = torch.arange(1, num_layers + 1, dtype=torch.float64)
    return (2 * k / (num_layers * (num_layers + 1))).to(torch.get_default_dtype())


def weighted_exit_loss(per_exit_losses: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    r"""The accumulated early-exit loss :math:`\sum_{k=1}^L w_k \mathcal{L}_k` (M6-Rec section 3.5).

    ``per_exit_losses[k-1]`` is :math:`\mathcal{L}_k`, the loss when exiting at layer k, and
    :math:`w_k` comes from :func:`exit_weights`. With losses [1, 2, 3, 4] the result is
    0.1 + 0.4 + 0.9 + 1.6 = 3.0.
    """
    losses = per_exit_losses if isinstance(per_exit_losses, torch.Tensor) else torch.stack(list(per_exit_losses))
    if losses.dim() != 1 or losses.numel() == 0:
        raise UserError(f"weighted_exit_loss needs one scalar loss per exit, got a tensor of shape "
                        f"{tuple(losses.shape)}; pass a sequence of L scalar losses.")
    weights = exit_weights(losses.numel()).to(device=losses.device, dtype=losses.dtype)
    return (weights * losses).sum()


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    r"""Entropy of the softmax over the last dimension, in nats: :math:`-\sum_c p_c \log p_c`.

    DeeBERT (Xin et al. 2020, ref [53] of M6-Rec) exits at the first layer whose entropy is below
    a threshold. Two equal logits give :math:`\log 2 \approx 0.693`.
    """
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


# ---------------------------------------------------------------------------------------------
# Running k layers only


def _albert(model: nn.Module) -> AlbertModel:
    """The ``AlbertModel`` inside ``model`` (the model itself, or the base of a task model)."""
    base = getattr(model, "base_model", model)
    if not isinstance(base, AlbertModel):
        raise UserError(f"Early exit needs an ALBERT model, got {type(model).__name__}; "
                        "build the student with edgekit.student.build_student.")
    return base


def _check_layer(name: str, layer, depth: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= depth:
        raise UserError(f"{name} must be a layer between 1 and the model's depth {depth}, got {layer!r}; "
                        f"pick a layer in 1..{depth}.")
    return layer


def _check_attention_mask(attention_mask, input_ids: torch.Tensor) -> None:
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise UserError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                        f"{tuple(attention_mask.shape)}; pass the tokenizer's 2D padding mask.")


def _embed(albert: AlbertModel, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    """The input of layer 1: token embeddings projected to the hidden size (ALBERT's factorization)."""
    embedding_output = albert.embeddings(input_ids, token_type_ids=token_type_ids)
    return albert.encoder.embedding_hidden_mapping_in(embedding_output)


def _prepare_mask(albert: AlbertModel, hidden: torch.Tensor, attention_mask: torch.Tensor | None):
    # The same call AlbertModel.forward makes: the result depends on the attention implementation
    # (additive float mask for eager, boolean or None for sdpa when there is no padding).
    # Only the batch size, length, dtype and device of `hidden` are read.
    return create_bidirectional_mask(config=albert.config, inputs_embeds=hidden, attention_mask=attention_mask)


def _layer(albert: AlbertModel, index: int, hidden: torch.Tensor, mask) -> torch.Tensor:
    """Layer ``index`` (0-based) of the encoder: the layer group AlbertTransformer picks for that depth."""
    config = albert.config
    group = int(index / (config.num_hidden_layers / config.num_hidden_groups))
    return albert.encoder.albert_layer_groups[group](hidden, mask)


def encode_to_layer(albert_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    token_type_ids: torch.Tensor | None = None,
                    exit_layer: int | None = None) -> list[torch.Tensor]:
    """Hidden states (B, T, H) of layers 1..``exit_layer``, computing no layer above ``exit_layer``.

    Equal to ``AlbertModel(..., output_hidden_states=True).hidden_states[1:exit_layer + 1]``;
    ``exit_layer=None`` runs every layer. ``albert_model`` may also be a task model with an ALBERT base.
    """
    albert = _albert(albert_model)
    depth = albert.config.num_hidden_layers
    exit_layer = depth if exit_layer is None else _check_layer("exit_layer", exit_layer, depth)
    _check_attention_mask(attention_mask, input_ids)
    hidden = _embed(albert, input_ids, token_type_ids)
    mask = _prepare_mask(albert, hidden, attention_mask)
    states = []
    for index in range(exit_layer):
        hidden = _layer(albert, index, hidden, mask)
        states.append(hidden)
    return states


# ---------------------------------------------------------------------------------------------
# The classifier


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
    exactly the inner model's logits. Save and load the inner model with ``save_pretrained`` /
    ``from_pretrained``; the checkpoint is a standard Hugging Face one.
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

    # -- the shared head

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) from one layer's hidden states (B, T, H), as the inner model computes them."""
        albert = self.model.albert
        pooled = albert.pooler_activation(albert.pooler(hidden[:, 0]))
        return self.model.classifier(self.model.dropout(pooled))

    # -- training and fixed budgets

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                exit_layer: int | None = None, early_exit: bool = True) -> EarlyExitOutput:
        """Logits of every exit 1..``exit_layer`` (default: all layers) and, given labels, the loss.

        The loss is ``weighted_exit_loss`` of the exits' cross-entropies (weights over the K exits
        computed, so they sum to 1); ``early_exit=False`` trains the last computed exit only.
        """
        states = encode_to_layer(self.model.albert, input_ids, attention_mask, token_type_ids, exit_layer)
        logits = torch.stack([self.head(hidden) for hidden in states])
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
        exit_layer = self.depth if exit_layer is None else _check_layer("exit_layer", exit_layer, self.depth)
        states = encode_to_layer(self.model.albert, input_ids, attention_mask, token_type_ids, exit_layer)
        return self.head(states[-1]).argmax(dim=-1)

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
        max_layer = self.depth if max_layer is None else _check_layer("max_layer", max_layer, self.depth)
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
        hidden = _embed(albert, input_ids, token_type_ids)
        mask2d = attention_mask
        previous = torch.full((batch,), -1, dtype=torch.long, device=device)
        counter = torch.zeros(batch, dtype=torch.long, device=device)

        for index in range(max_layer):
            layer = index + 1
            hidden = _layer(albert, index, hidden, _prepare_mask(albert, hidden, mask2d))
            logits = self.head(hidden)
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


def predict_texts(model_dir, texts: list[str], exit_layer: int | None = None, patience: int | None = None,
                  entropy: float | None = None, max_length: int = 128) -> list[dict]:
    """Label, probability and exit layer of each text: a fixed exit, or a dynamic one (patience or entropy)."""
    from edgekit.checkpoint import check_model_dir, load_config_of, load_tokenizer

    check_model_dir(model_dir)
    config = load_config_of(model_dir)
    if "AlbertForSequenceClassification" not in (getattr(config, "architectures", None) or []):
        raise UserError(f"'{model_dir}' is not a fine-tuned classifier; run `edgekit finetune` on it first.")
    if sum(x is not None for x in (exit_layer, patience, entropy)) > 1:
        raise UserError("choose one of --exit-layer, --patience and --entropy.")
    clf = EarlyExitClassifier.from_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    kw = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if patience is not None or entropy is not None:
        mode = "patience" if patience is not None else "entropy"
        _, layers, logits = clf.predict_dynamic(**kw, mode=mode, patience=patience or 1,
                                                entropy_threshold=entropy if entropy is not None else 0.1)
    else:
        k = clf.depth if exit_layer is None else _check_layer("exit_layer", exit_layer, clf.depth)
        with torch.no_grad():
            logits = clf.head(encode_to_layer(clf.model.albert, exit_layer=k, **kw)[-1])
        layers = torch.full((len(texts),), k)
    probs = logits.softmax(-1)
    id2label = clf.model.config.id2label
    return [{"text": t, "label": id2label[int(p.argmax())], "score": float(p.max()), "exit_layer": int(k),
             "scores": [round(float(x), 6) for x in p]} for t, p, k in zip(texts, probs, layers)]
