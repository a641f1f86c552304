"""``LateInteractionClassifier``: a fine-tuned classifier split at layer L' = L - late_layers (M6-Rec 3.3).

It wraps the two kinds of model ``edgekit finetune`` trains: an edgekit student (ALBERT, run
through ``edgekit.albert``'s pieces) and a BERT-family encoder (a teacher such as e5), and adds a
learnable segment embedding (``max_segments`` rows, initialised to zero, so a fresh model on one
segment computes exactly the plain classifier).

- Training, one pass (Figure 4): ``forward_one_pass`` runs all segments of an example packed in
  one sequence; the first L' layers see a block-diagonal mask and per-segment positions, the
  segment embedding is added to layer L''s output, the last L - L' layers see the whole sequence.
- Serving: ``encode_segments`` runs the first L' layers on each segment alone (positions from 0),
  ``interact`` concatenates cached outputs, adds the segment embedding and runs the rest. Both
  compute the same numbers (blocked keys get attention weight exactly 0).

The head reads the summary position: the first token of the request, which is the [CLS] of its
first segment (``cls`` pooling, the classifier's own pooler + classifier). That token is the one
the pooler was trained on, and in the last layers it attends to every segment, so it summarizes
the request; in the first L' layers it summarizes segment 1 only. A ``mean`` model (e5) reads
the mean of all real tokens of the request instead.

Composition: pruning, yes: the weights are the classifier's own, so ``keep_sparsity`` keeps a
pruned model's zeros. Early exit: only exits at layers > L' see the whole request (an exit at or
below L' reads one segment), so late-interaction training uses the last layer's loss and the
exported bundle has the one exit L; per-layer exits in the last layers are left undone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgekit.albert import apply_layer, classifier_head, mean_pool, pooling_of
from edgekit.errors import UserError
from edgekit.late_interaction.segments import additive_mask, block_diagonal_allowed, full_allowed
from edgekit_device.segments import SegmentError

SEGMENT_EMBEDDING_FILE = "segment_embedding.safetensors"
SETTINGS_KEY = "late_interaction"  # in config.json and edgekit.json: late_layers, max_segments, max_segment_tokens


class SegmentInputError(SegmentError, UserError):
    """A bad request on the PyTorch side: a ``SegmentError`` for servers, a ``UserError`` for the CLI."""


def _unwrap(classifier: nn.Module) -> nn.Module:
    """The Hugging Face sequence classifier inside edgekit's wrappers (early exit, mean pooling)."""
    while hasattr(classifier, "model") and isinstance(classifier.model, nn.Module) \
            and hasattr(classifier.model, "config"):
        classifier = classifier.model
    return classifier


def length_groups(lengths: list[int], ratio: float = 2.0) -> list[list[int]]:
    """Indices grouped for padded batches: sorted by length, a new group once a length exceeds
    ``ratio`` x the group's shortest, so padding at most doubles a group's tokens.

    Example: lengths (180, 5, 7, 12) -> [[1, 2], [3], [0]] (5, 7 | 12 > 2*5 | 180)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and lengths[i] <= ratio * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def check_split(late_layers, depth: int) -> int:
    """L' = depth - late_layers, for 1 <= late_layers <= depth; a one-sentence UserError otherwise."""
    if isinstance(late_layers, bool) or not isinstance(late_layers, int) or not 1 <= late_layers <= depth:
        raise UserError(f"late_interaction.late_layers must be between 1 and the model's depth {depth}, got "
                        f"{late_layers!r}; the paper uses 1 to 3.")
    return depth - late_layers


class LateInteractionClassifier(nn.Module):
    """A sequence classifier whose first L' layers run per segment and last ``late_layers`` per request."""

    def __init__(self, classifier: nn.Module, late_layers: int, max_segments: int = 16,
                 max_segment_tokens: int = 64):
        super().__init__()
        self.classifier = _unwrap(classifier)
        config = self.classifier.config
        if config.model_type == "albert":
            self.family = "albert"
            self.base = self.classifier.albert
        elif hasattr(self.classifier, "bert") and hasattr(self.classifier, "classifier"):
            self.family = "bert"
            self.base = self.classifier.bert
        else:
            raise UserError(f"late interaction runs ALBERT students and BERT-family encoders, got "
                            f"{type(self.classifier).__name__}; fine-tune one of those.")
        self.depth = config.num_hidden_layers
        self.split = check_split(late_layers, self.depth)
        positions = getattr(config, "max_position_embeddings", None)
        # a segment holds at least [CLS] and [SEP], and no more tokens than the model has positions
        for name, value, low, top in (("max_segments", max_segments, 1, 1 << 16),
                                      ("max_segment_tokens", max_segment_tokens, 2, positions or 1 << 16)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
                raise UserError(f"late_interaction.{name} must be an integer between {low} and {top}, got {value!r}.")
        self.late_layers, self.max_segments, self.max_segment_tokens = late_layers, max_segments, max_segment_tokens
        self.segment_embedding = nn.Embedding(max_segments, config.hidden_size)
        nn.init.zeros_(self.segment_embedding.weight)  # a fresh model equals the plain classifier on one segment
        config.late_interaction = self.settings()

    @property
    def config(self):
        return self.classifier.config

    @property
    def pooling(self) -> str:
        return pooling_of(self.config)

    def settings(self) -> dict:
        return {"late_layers": self.late_layers, "max_segments": self.max_segments,
                "max_segment_tokens": self.max_segment_tokens}

    # -- the model's pieces, by family

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The input of layer 1 (B, T, H) with explicit positions (token type 0 everywhere)."""
        types = torch.zeros_like(input_ids)
        out = self.base.embeddings(input_ids=input_ids, token_type_ids=types, position_ids=position_ids)
        if self.family == "albert":
            out = self.base.encoder.embedding_hidden_mapping_in(out)
        return out

    def layer(self, index: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Layer ``index`` (0-based) with an additive (B, 1, T, T) mask."""
        if self.family == "albert":
            return apply_layer(self.base, index, hidden, mask)
        return self.base.encoder.layer[index](hidden, mask)

    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) from the last layer: the first position ([CLS] of segment 1) or the token mean."""
        if self.family == "albert":
            return classifier_head(self.classifier, hidden, attention_mask)
        dropout = getattr(self.classifier, "dropout", None) or nn.Identity()
        if self.pooling == "mean":
            pooled = mean_pool(hidden, attention_mask)
        else:
            pooled = self.base.pooler(hidden)  # BertPooler: tanh(dense(hidden[:, 0]))
        return self.classifier.classifier(dropout(pooled))

    def lower(self, hidden: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        """Layers 1..L' under the block-diagonal mask of ``segment_ids`` (B, T; -1 padding)."""
        mask = additive_mask(block_diagonal_allowed(segment_ids), hidden.dtype)
        for index in range(self.split):
            hidden = self.layer(index, hidden, mask)
        return hidden

    def upper(self, hidden: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        """Segment embedding, layers L'+1..L under the full mask, head: (B, T, H) -> logits (B, C)."""
        hidden = hidden + self.segment_embedding(segment_ids.clamp(min=0))
        mask = additive_mask(full_allowed(segment_ids), hidden.dtype)
        for index in range(self.split, self.depth):
            hidden = self.layer(index, hidden, mask)
        return self.head(hidden, (segment_ids >= 0).long())

    # -- training (Figure 4)

    def forward_one_pass(self, batch: dict) -> torch.Tensor:
        """Logits (B, C) of packed examples: ``input_ids``, ``segment_ids`` (-1 padding), ``position_ids``, all (B, T)."""
        segment_ids = batch["segment_ids"]
        if int(segment_ids.max()) >= self.max_segments:
            raise SegmentInputError(f"an example has {int(segment_ids.max()) + 1} segments but the model takes at most "
                                    f"{self.max_segments}; raise late_interaction.max_segments or merge segments.")
        hidden = self.embed(batch["input_ids"], batch["position_ids"])
        return self.upper(self.lower(hidden, segment_ids), segment_ids)

    forward = forward_one_pass

    # -- serving

    @torch.no_grad()
    def encode_segment_ids(self, segments: list[list[int]]) -> list[torch.Tensor]:
        """The L'-layer output (n_i, H) of each token-id list alone, positions from 0 (batched, padded).

        Segments run in groups of similar length (``length_groups``): one batch padded to the
        longest would run a request's short keywords at its abstract's length (a CSL request cold:
        3x the full model's time instead of 0.9x, benchmarks/late_interaction.py)."""
        out: list[torch.Tensor | None] = [None] * len(segments)
        for group in length_groups([len(s) for s in segments]):
            for i, hidden in zip(group, self._encode_padded([segments[i] for i in group])):
                out[i] = hidden
        return out

    def _encode_padded(self, segments: list[list[int]]) -> list[torch.Tensor]:
        if not segments:
            return []
        longest = max(len(s) for s in segments)
        device = self.segment_embedding.weight.device
        ids = torch.zeros(len(segments), longest, dtype=torch.long, device=device)
        seg = torch.full((len(segments), longest), -1, dtype=torch.long, device=device)
        for row, tokens in enumerate(segments):
            ids[row, :len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
            seg[row, :len(tokens)] = 0
        positions = torch.arange(longest, device=device).expand(len(segments), -1)
        hidden = self.lower(self.embed(ids, positions), seg)
        return [hidden[row, :len(tokens)] for row, tokens in enumerate(segments)]

    @torch.no_grad()
    def interact(self, requests: list[list[torch.Tensor]]) -> torch.Tensor:
        """Logits (R, C) of requests given as their segments' L'-layer outputs, in order."""
        hidden_size = self.config.hidden_size
        for r, request in enumerate(requests):
            if not request:
                raise SegmentInputError(f"request {r} has no segments; send at least one segment.")
            if len(request) > self.max_segments:
                raise SegmentInputError(f"request {r} has {len(request)} segments but the model takes at most "
                                        f"{self.max_segments}; send fewer (or merge some).")
            for s, part in enumerate(request):
                if part.dim() != 2 or part.shape[0] < 1 or part.shape[1] != hidden_size:
                    raise SegmentInputError(f"segment {s} of request {r} has shape {tuple(part.shape)}; it must be "
                                            f"(tokens, {hidden_size}) as encode_segments returned it.")
        device = self.segment_embedding.weight.device
        total = max(sum(p.shape[0] for p in request) for request in requests)
        hidden = torch.zeros(len(requests), total, hidden_size, device=device)
        seg = torch.full((len(requests), total), -1, dtype=torch.long, device=device)
        for r, request in enumerate(requests):
            start = 0
            for s, part in enumerate(request):
                hidden[r, start:start + part.shape[0]] = part.to(device)
                seg[r, start:start + part.shape[0]] = s
                start += part.shape[0]
        return self.upper(hidden, seg)

    # -- checkpoints

    def save_pretrained(self, path, **kwargs) -> None:
        """The classifier's own files (config.json records ``late_interaction``) + ``segment_embedding.safetensors``."""
        from safetensors.torch import save_file

        self.config.late_interaction = self.settings()
        self.classifier.save_pretrained(path, **kwargs)
        save_file({"weight": self.segment_embedding.weight.detach().cpu().contiguous()},
                  str(Path(path) / SEGMENT_EMBEDDING_FILE))

    @classmethod
    def from_pretrained(cls, path, late_layers: int | None = None, max_segments: int | None = None,
                        max_segment_tokens: int | None = None) -> LateInteractionClassifier:
        """A saved late-interaction checkpoint, or a plain classifier split at ``late_layers`` (zero segment embedding)."""
        from edgekit.checkpoint import load_config_of, quiet_loading

        config = load_config_of(path)
        saved = getattr(config, SETTINGS_KEY, None) or {}
        late_layers = late_layers if late_layers is not None else saved.get("late_layers")
        if late_layers is None:
            raise UserError(f"'{path}' is not a late-interaction checkpoint (its config.json has no late_interaction); "
                            "fine-tune it with `edgekit finetune --late-interaction`, or give late_layers.")
        with quiet_loading():
            if config.model_type == "albert":
                from transformers import AlbertForSequenceClassification

                classifier = AlbertForSequenceClassification.from_pretrained(path)
            else:
                from transformers import AutoModelForSequenceClassification

                classifier = AutoModelForSequenceClassification.from_pretrained(path)
        model = cls(classifier, late_layers,
                    saved.get("max_segments", 16) if max_segments is None else max_segments,
                    saved.get("max_segment_tokens", 64) if max_segment_tokens is None else max_segment_tokens)
        stored = Path(path) / SEGMENT_EMBEDDING_FILE
        if stored.is_file() and saved:
            from safetensors.torch import load_file

            weight = load_file(str(stored)).get("weight")
            if weight is None or tuple(weight.shape) != tuple(model.segment_embedding.weight.shape):
                raise UserError(f"'{stored}' does not hold a ({model.max_segments}, {config.hidden_size}) 'weight'; "
                                "the checkpoint is damaged: fine-tune it again.")
            with torch.no_grad():
                model.segment_embedding.weight.copy_(weight)
        elif saved:
            raise UserError(f"'{path}' records late_interaction but has no {SEGMENT_EMBEDDING_FILE}; the checkpoint "
                            "is incomplete: copy it again or fine-tune it again.")
        return model.eval()
