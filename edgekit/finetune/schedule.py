"""Fine-tuning defaults that converge: epochs, steps, learning rate, warm-up, input length.

CLUE's own baselines fine-tune TNEWS and IFLYTEK at max length 128 for 3 epochs and CSL at 256 for
5 (keywords first, so truncation cuts the abstract), with warm-up over the first 10% of the steps
and a learning rate around 2e-5..5e-5 for base-size models; small students need a larger one
(1e-4). The per-task numbers live in the task registry (``edgekit.tasks.TASKS``: ``max_length``,
``epochs``); any other task gets 128 tokens and 3 epochs. A recipe value always wins; what was
chosen, and why, is printed and written to ``results.json`` (``schedule``).
"""

from __future__ import annotations

import math

from edgekit.errors import UserError

DEFAULT_MAX_LENGTH = 128
DEFAULT_EPOCHS = 3
SMALL_MODEL_LR = 1e-4          # small students (and other encoders under SMALL_MODEL_PARAMETERS)
BASE_MODEL_LR = 3e-5           # base-size encoders: the middle of CLUE's 2e-5..5e-5
SMALL_MODEL_PARAMETERS = 30_000_000   # non-embedding parameters; BERT-base has 85M, e5-small 21M


def task_max_length(task: str) -> int:
    """The task's default input length in tokens: ``TASKS[task].max_length`` (CSL 256), else 128."""
    from edgekit.tasks import TASKS

    spec = TASKS.get(task)
    return spec.max_length if spec is not None else DEFAULT_MAX_LENGTH


def task_epochs(task: str) -> int:
    """The task's default number of epochs: ``TASKS[task].epochs`` (CSL 5), else 3."""
    from edgekit.tasks import TASKS

    spec = TASKS.get(task)
    return spec.epochs if spec is not None else DEFAULT_EPOCHS


def steps_for_epochs(num_examples: int, epochs: float, batch_size: int, world_size: int = 1,
                     grad_accum: int = 1) -> int:
    """Optimizer steps that cover ``epochs`` passes over the train set:
    max(1, ⌈epochs · ⌊n / (B·W)⌋ / A⌉).

    ⌊n / (B·W)⌋ is the number of global batches per epoch (``ResumableBatches`` drops the last
    partial one), A the gradient-accumulation micro-batches per step. n = 1000, B = 32, W = 1, A = 1,
    3 epochs: ⌊1000/32⌋ = 31 batches, 93 steps.
    """
    if not epochs > 0:
        raise UserError(f"train.epochs must be positive, got {epochs}.")
    per_epoch = num_examples // (batch_size * world_size)
    return max(1, math.ceil(epochs * per_epoch / grad_accum))


def non_embedding_parameters(model) -> int:
    """Parameters outside the embedding tables: what sets a model's size class (a 250k-piece
    vocabulary makes e5-small 118M parameters, 21M of them in its layers)."""
    from torch import nn

    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def default_lr(non_embedding: int) -> float:
    """1e-4 below 30M non-embedding parameters (students, e5-small), else 3e-5 (base-size)."""
    return SMALL_MODEL_LR if non_embedding < SMALL_MODEL_PARAMETERS else BASE_MODEL_LR


def resolve_schedule(cfg, num_examples: int, model, world_size: int = 1) -> dict:
    """Fill ``cfg.train.max_steps`` and ``cfg.train.lr`` when the recipe left them unset; returns
    what was chosen and where each value came from (the recipe or a default)."""
    train, task = cfg.train, cfg.task
    chosen = {"max_length": task.max_length, "warmup_ratio": train.warmup_ratio, "batch_size": train.batch_size}
    source = {"max_length": "recipe" if task.max_length != task_max_length(task.name) else
              f"default for {task.name}"}
    if train.max_steps is None:
        epochs = train.epochs if train.epochs is not None else task_epochs(task.name)
        source["max_steps"] = ("train.epochs" if train.epochs is not None else f"default for {task.name}") + \
            f": {epochs:g} epochs of {num_examples:,} examples"
        train.max_steps = steps_for_epochs(num_examples, epochs, train.batch_size, world_size, train.grad_accum)
        chosen["epochs"] = epochs
    else:
        source["max_steps"] = "recipe"
        per_epoch = max(1, num_examples // (train.batch_size * world_size))
        chosen["epochs"] = round(train.max_steps * train.grad_accum / per_epoch, 3)
    chosen["max_steps"] = train.max_steps
    if train.lr is None:
        size = non_embedding_parameters(model)
        train.lr = default_lr(size)
        source["lr"] = f"default for {size / 1e6:.1f}M non-embedding parameters"
    else:
        source["lr"] = "recipe"
    chosen["lr"] = train.lr
    chosen["source"] = source
    return chosen


def describe_schedule(task: str, chosen: dict) -> str:
    """One line saying what fine-tuning will do, for the console."""
    s = chosen["source"]
    return (f"finetune {task}: {chosen['max_steps']:,} steps ({chosen['epochs']:g} epochs; {s['max_steps']}), "
            f"batch {chosen['batch_size']}, lr {chosen['lr']:g} ({s['lr']}), warm-up {chosen['warmup_ratio']:g}, "
            f"max length {chosen['max_length']} ({s['max_length']})")
