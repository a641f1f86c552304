"""The tuned model of ``edgekit tune``: one base encoder and one task's parameters, for every method.

========================  ===========================================  ================================
method                    trained                                      classifier
========================  ===========================================  ================================
``finetune``              every parameter of the base, a head          linear head on the summary
``lora``                  LoRA on query/value (Hugging Face PEFT), a    linear head on the summary
                          head
``prompt``                N soft prompts, a head                       linear head on the summary
``option``                N soft prompts, the special tokens'          the last C soft prompts
                          embeddings ([CLS], [SEP] / <s>, </s>)        (``options.option_logits``)
``option-adapter``        as ``option``, plus an FFN adapter per        the last C soft prompts
                          layer (``adapter.adapter_delta``)
========================  ===========================================  ================================

Where the soft prompts go: right after the first token, ``[CLS] p₁ … p_N x₁ … x_T [SEP]``. [CLS]
keeps position 0, where pretraining always saw it, and the text moves N positions to the right,
so N + ``max_length`` must fit in the model's positions. Prompts live in the word-embedding space
(width E) and get the position and token-type embeddings of their positions like any token.

The summary vector is the last layer at [CLS] (``pooling: cls``) or the masked mean over every
position, soft prompts included (``mean``, what e5 was trained with). Neither uses the model's
pooler (e5's import has none). A soft option is an embedding (width E); it meets the summary
(width H) through the model's own E → H embedding projection where the two differ (ALBERT's
factorized embeddings), unchanged where they are equal (BERT, e5).

The same functions serve one task (``TuneModule``) and a batch that mixes tasks (``TaskBank``):
each takes the task parameters either once for the batch or stacked per example.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.albert import mean_pool
from edgekit.errors import UserError
from edgekit.tune.adapter import AdapterHooks, FFNAdapters, ffn_modules
from edgekit.tune.options import option_logits, soft_options

METHODS = ("finetune", "lora", "prompt", "option", "option-adapter")
FROZEN_BASE = ("prompt", "option", "option-adapter")   # the base stays as it is: one base serves many tasks
OPTION_METHODS = ("option", "option-adapter")
POOLINGS = ("cls", "mean")
LORA_TARGETS = {"albert": ["query", "value"], "distilbert": ["q_lin", "v_lin"]}  # others: BERT's names


@dataclass
class TuneSpec:
    """Everything that shapes a task's parameters; saved in the task file to rebuild them."""

    method: str
    num_labels: int
    pooling: str = "cls"
    prompts: int = 0                 # N soft prompts (prompt-like methods); the last C are the options
    special_ids: list[int] = field(default_factory=list)  # token ids whose embeddings option tuning trains
    adapter_rank: int = 0            # r (option-adapter)
    adapter_count: int = 0           # L (one per depth) or 1 (one shared by every depth)
    lora: dict | None = None         # PEFT LoraConfig arguments (lora)

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"unknown tuning method '{self.method}'; choose one of {', '.join(METHODS)}.")
        if self.pooling not in POOLINGS:
            raise UserError(f"tune.pooling must be one of auto, {', '.join(POOLINGS)}, got {self.pooling!r}.")

    def to_json(self) -> dict:
        return asdict(self)


def special_token_ids(tokenizer) -> list[int]:
    """The ids of the tokens every input carries ([CLS]/[SEP], or <s>/</s>), padding excluded."""
    ids = []
    for name in ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id"):
        i = getattr(tokenizer, name, None)
        if i is not None and i != tokenizer.pad_token_id and i not in ids:
            ids.append(int(i))
    return ids


class Base(nn.Module):
    """A Hugging Face encoder (``AutoModel``) and what tuning needs to know about its shape."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from edgekit.distill.adapters import model_shape

        self.model = model
        config = model.config
        self.model_type = config.model_type
        self.depth, self.hidden, self.heads = model_shape(config)
        self.positions = int(getattr(config, "max_position_embeddings"))
        self.word_embeddings = model.get_input_embeddings()
        self.width = self.word_embeddings.embedding_dim
        self.projection = None  # E -> H where the family factorizes its embeddings
        for path in ("encoder.embedding_hidden_mapping_in", "embeddings_project"):
            module = model
            for part in path.split("."):
                module = getattr(module, part, None)
            if isinstance(module, nn.Module):
                self.projection = module
                break
        if self.projection is None and self.width != self.hidden:
            raise UserError(f"this '{self.model_type}' model's embeddings ({self.width}) and hidden states "
                            f"({self.hidden}) differ and no embedding projection was found; option tuning cannot "
                            "score soft options against its summary vector.")
        self.hooks: AdapterHooks | None = None
        self.parameters_at_load = sum(p.numel() for p in model.parameters())  # before LoRA adds its own

    def parameter_count(self) -> int:
        """The base model's own parameters (the denominator of "% of the model")."""
        return self.parameters_at_load

    def to_hidden(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings (…, E) -> (…, H) by the model's own projection (identity when E = H)."""
        return embeddings if self.projection is None else self.projection(embeddings)

    def add_adapter_hooks(self) -> AdapterHooks:
        if self.hooks is None:
            self.hooks = AdapterHooks(ffn_modules(self.model, self.model_type))
        return self.hooks

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor, adapters=None, per_example: bool = False):
        """The last layer (B, T, H) for input embeddings (B, T, E), with FFN adapters if given."""
        if adapters is not None:
            self.add_adapter_hooks()
        if self.hooks is not None:
            self.hooks.set(adapters, per_example)
            self.hooks.start()
        try:
            return self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        finally:
            if self.hooks is not None:
                self.hooks.set(None)


# --- the pieces of a forward pass, for one task or one task per example ------------------------

def replace_special(embeds: torch.Tensor, input_ids: torch.Tensor, special_ids, special: torch.Tensor):
    """The embeddings of the special tokens replaced by the task's: ``special`` (S, E) or (B, S, E)."""
    for k, token in enumerate(special_ids):
        row = special[k] if special.dim() == 2 else special[:, k][:, None, :]
        embeds = torch.where((input_ids == token)[..., None], row, embeds)
    return embeds


def insert_prompts(embeds: torch.Tensor, mask: torch.Tensor, prompts: torch.Tensor,
                   counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] p₁ … p_N x₁ …``: the soft prompts right after the first token, and the mask to match.

    ``embeds`` (B, T, E) and ``mask`` (B, T) are right-padded. ``prompts`` (N, E): the same prompts
    for every example. ``prompts`` (B, N_max, E) with ``counts`` (B,): example b gets its first
    counts[b] prompts and its text right after them, the row a batch of its own task would hold.
    """
    batch, length, width = embeds.shape
    if prompts.dim() == 2:
        n = prompts.shape[0]
        return (torch.cat([embeds[:, :1], prompts.expand(batch, n, width), embeds[:, 1:]], dim=1),
                torch.cat([mask[:, :1], mask.new_ones(batch, n), mask[:, 1:]], dim=1))
    n_max = prompts.shape[1]
    full = torch.cat([embeds[:, :1], prompts, embeds[:, 1:]], dim=1)   # (B, 1 + N_max + T - 1, E)
    total = mask.sum(1) + counts                                         # each example's length
    j = torch.arange(int(total.max()), device=embeds.device)[None]
    n = counts[:, None]
    # position j of the output reads: 0 -> [CLS]; 1..n -> prompt j; after -> text token j - n
    source = torch.where(j <= n, j, j - n + n_max).clamp(max=full.shape[1] - 1)
    out = full.gather(1, source[..., None].expand(-1, -1, width))
    return out, (j < total[:, None]).to(mask.dtype)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The summary vector (B, H): [CLS]'s last layer (``cls``) or the masked token mean (``mean``)."""
    return hidden[:, 0] if pooling == "cls" else mean_pool(hidden, mask)


# --- one task's parameters ------------------------------------------------------------------

class TaskParams(nn.Module):
    """What a method adds to the base: soft prompts, special-token embeddings, adapters, a head."""

    def __init__(self, spec: TuneSpec, base: Base, generator: torch.Generator | None = None):
        super().__init__()
        table = base.word_embeddings.weight.detach()
        self.prompts = self.special = self.head = self.adapters = None
        if spec.method in FROZEN_BASE:
            # Lester et al.'s "sampled vocabulary" start: copies of random token embeddings
            rows = torch.randint(0, table.shape[0], (spec.prompts,), generator=generator)
            self.prompts = nn.Parameter(table[rows].clone().float())
        if spec.method in OPTION_METHODS:
            self.special = nn.Parameter(table[torch.tensor(spec.special_ids, dtype=torch.long)].clone().float())
        else:
            self.head = nn.Linear(base.hidden, spec.num_labels)
            with torch.no_grad():
                self.head.weight.normal_(0.0, 0.02, generator=generator)
                self.head.bias.zero_()
        if spec.method == "option-adapter":
            self.adapters = FFNAdapters(spec.adapter_count, base.hidden, spec.adapter_rank)


class TuneModule(nn.Module):
    """The training module of ``edgekit tune``: ``forward(batch) -> (loss, metrics)``.

    Its ``state_dict`` holds only the parameters tuning trains (what a checkpoint and a task file
    store); the base is its own checkpoint, identified by its hash in the task file.
    """

    def __init__(self, base: Base, spec: TuneSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        generator = torch.Generator().manual_seed(seed)
        if spec.method in FROZEN_BASE:
            base.requires_grad_(False)
        self.task = TaskParams(spec, base, generator)
        if spec.method == "lora":
            from peft import LoraConfig, get_peft_model

            base.requires_grad_(False)
            base.model = get_peft_model(base.model, LoraConfig(**spec.lora))
        self.base = base
        config = base.model.config
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout_prob", getattr(config, "dropout", 0.1)))

    # what is trained --------------------------------------------------------------------------
    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.trainable().items()}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        own = self.trainable()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise RuntimeError(f"task parameters do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, value in state.items():
                if name in own:
                    own[name].copy_(value)
        return missing, unexpected

    # forward ---------------------------------------------------------------------------------
    def summary(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base, task, spec = self.base, self.task, self.spec
        embeds = base.word_embeddings(input_ids)
        mask = attention_mask
        if task.special is not None:
            embeds = replace_special(embeds, input_ids, spec.special_ids, task.special)
        if task.prompts is not None:
            embeds, mask = insert_prompts(embeds, mask, task.prompts)
        adapters = task.adapters.stacked() if task.adapters is not None else None
        return pool(base.encode(embeds, mask, adapters), mask, spec.pooling)

    def classifier(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weights (C, H), bias (C) or None) of the task's classifier."""
        if self.task.head is not None:
            return self.task.head.weight, self.task.head.bias
        return self.base.to_hidden(soft_options(self.task.prompts, self.spec.num_labels)), None

    def logits(self, batch: dict) -> torch.Tensor:
        summary = self.dropout(self.summary(batch["input_ids"], batch["attention_mask"]))
        weights, bias = self.classifier()
        logits = option_logits(summary, weights)
        return logits if bias is None else logits + bias

    def forward(self, batch: dict):
        loss = F.cross_entropy(self.logits(batch), batch["labels"])
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def exit_logits(self, batch: dict) -> torch.Tensor:
        """(1, B, C): the shape ``edgekit.finetune``'s evaluation reads (one exit)."""
        return self.logits(batch)[None]


def lora_arguments(model_type: str, rank: int, alpha: int, dropout: float, targets: list[str] | None) -> dict:
    return {"r": rank, "lora_alpha": alpha, "lora_dropout": dropout,
            "target_modules": list(targets) if targets else LORA_TARGETS.get(model_type, ["query", "value"])}
