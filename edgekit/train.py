"""The training loop shared by every stage that trains (distill, prune, finetune).

AdamW, linear warm-up then linear decay, gradient clipping and accumulation, bf16 autocast where
the hardware has it, atomic checkpoints every N steps, exact resume (weights, optimizer, scheduler,
RNG and data position), a progress bar, ``metrics.jsonl`` in the run directory, and data-parallel
training under ``torchrun`` (torch.distributed DDP: gloo on CPU, nccl on GPU).

Training owns the optimizer and the loop; what is trained and what the loss is belong to the
stage (``loss_fn``), and stage-specific work between steps (pruning masks) lives in callbacks.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.io import RunDir, atomic_dir, latest_checkpoint, remove_stale_temporaries, write_json


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during training (a scheduler's stop, ``kill``, a container stopping). The loop
    treats it as Ctrl+C: the step in flight is finished or undone and a checkpoint is written, so
    ``--resume`` continues from the step the run had reached."""


@contextmanager
def terminate_as_interrupt(enabled: bool = True):
    """While inside, SIGTERM raises :class:`Terminated` in the main thread instead of ending the process
    at once. A second SIGTERM (while the checkpoint is written) is ignored; SIGKILL still ends it.
    Nothing changes when not ``enabled`` (the trainer: under torchrun, where ranks stopped at different
    points of a collective could wait on each other forever), outside the main thread, or where
    someone else installed a TERM handler."""
    if not enabled or threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def interruption(e: KeyboardInterrupt) -> tuple[str, int]:
    """How an interrupted command reports itself: its words and exit status, 128 + the signal's
    number (the shell's convention): ``("interrupted", 130)`` for Ctrl+C, ``("terminated (SIGTERM)",
    143)`` for :class:`Terminated`."""
    if isinstance(e, Terminated):
        return "terminated (SIGTERM)", 143
    return "interrupted", 130


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = 42
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "save_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be at least 1, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise UserError(f"train.lr must be positive, got {self.lr}.")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: step/warmup during warm-up, then (total − step)/(total − warmup) down to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


# --- distributed ----------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def pick_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast on GPUs that support it; on CPU only when asked (it is slower without AMX)."""
    if cfg.precision == "bf16":
        return True
    if cfg.precision == "fp32":
        return False
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


# --- checkpoints ----------------------------------------------------------------------------

def _rng_state() -> dict:
    """Every RNG's state as tensors, numbers and None only, so that a checkpoint loads with
    ``torch.load(weights_only=True)``: a run directory from someone else cannot run code on resume."""
    version, words, gauss_next = random.getstate()
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {"python": {"version": int(version), "words": torch.tensor(words, dtype=torch.int64),
                        "gauss_next": gauss_next},
             "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss_next"]))
    np.random.set_state(("MT19937", npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs ``model(batch) -> (loss, metrics)`` for ``cfg.max_steps`` optimizer steps.

    ``model`` is the stage's training module: its forward computes the loss (so DDP sees which
    parameters produced it) and its sub-modules are exactly what is trained and checkpointed.

    ``next_batch()`` returns the next micro-batch (a dict of tensors); ``data_state`` is an object
    with ``state_dict``/``load_state_dict`` for the data position. ``callbacks`` may define
    ``before_optimizer_step(step)``, ``after_optimizer_step(step)``, ``state_dict()``,
    ``load_state_dict(state)`` and ``metrics()``. ``save_model(model, directory)`` writes a usable
    model into each checkpoint.
    """

    def __init__(self, model: nn.Module, next_batch, data_state, cfg: TrainConfig, run: RunDir,
                 save_model=None, callbacks=(), dist: DistInfo | None = None, desc: str = "train"):
        cfg.validate()
        self.cfg, self.run, self.desc = cfg, run, desc
        self.dist = dist or DistInfo()
        self.device = pick_device(cfg, self.dist)
        self.model = model.to(self.device)
        self.next_batch, self.data_state = next_batch, data_state
        self.save_model, self.callbacks = save_model, list(callbacks)
        self.bf16 = use_bf16(cfg, self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        warmup = int(cfg.warmup_ratio * cfg.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: linear_warmup_decay(s, warmup, cfg.max_steps))
        self.step = 0
        self.wrapped = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DDP(model, device_ids=ids, find_unused_parameters=True)

    # state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.data_state.state_dict(),
            "rng": _rng_state(),
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.callbacks],
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data_state.load_state_dict(state["data"])
        _set_rng_state(state["rng"])
        for cb, s in zip(self.callbacks, state.get("callbacks", [])):
            if s is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(s)
        self.step = int(state["step"])

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` atomically (rank 0) and keep the newest few."""
        final = self.run.path / "checkpoints" / f"step-{self.step:07d}"
        if self.dist.is_main:
            state = self.state_dict()
            with atomic_dir(final, "train-checkpoint", overwrite=True) as tmp:  # a step saved again on interrupt
                if self.save_model is not None:
                    self.save_model(self.model, tmp / "model")
                torch.save(state, tmp / "trainer_state.pt")
                write_json(tmp / "step.json", {"step": self.step})
            done = sorted(p for p in final.parent.glob("step-*") if (p / "trainer_state.pt").exists())
            for old in done[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        barrier(self.dist)
        return final

    def resume(self) -> bool:
        if self.dist.is_main:
            remove_stale_temporaries(self.run.path)
        ckpt = latest_checkpoint(self.run.path)
        if ckpt is None:
            return False
        try:
            # tensors and plain data only: loading runs no code from the file
            state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (whatever the file holds, the answer is one sentence)
            raise UserError(f"cannot resume from '{ckpt}': its trainer_state.pt is not a checkpoint this edgekit reads "
                            f"({type(e).__name__}); it was written by an older edgekit or is damaged, so start the run "
                            f"again with --overwrite.") from None
        self.load_state_dict(state)
        if self.dist.is_main:
            self.run.truncate_metrics(self.step)
        return True

    # loop -------------------------------------------------------------------------------
    def _move(self, batch: dict) -> dict:
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train(self, stop_after_step: int | None = None) -> dict:
        """Train to ``max_steps``. ``stop_after_step`` ends early after checkpointing that step,
        as an interruption would (used to test resume)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.desc, disable=not self.dist.is_main,
                   dynamic_ncols=True, mininterval=1.0)
        self.model.train()
        last = {}
        window_tokens, window_start = 0, time.perf_counter()
        with terminate_as_interrupt(enabled=not self.dist.enabled):  # SIGTERM checkpoints as Ctrl+C does
            try:
                while self.step < cfg.max_steps:
                    step_metrics: dict[str, float] = {}
                    tokens = 0
                    # what an interruption inside this step must restore, so the step is redone whole
                    snapshot = (self.data_state.state_dict(), _rng_state())
                    for micro in range(cfg.grad_accum):
                        batch = self._move(self.next_batch())
                        tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
                        sync = nullcontext()
                        if self.dist.enabled and micro < cfg.grad_accum - 1:
                            sync = self.wrapped.no_sync()
                        with sync:
                            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                                loss, metrics = self.wrapped(batch)
                            (loss / cfg.grad_accum).backward()
                        for k, v in metrics.items():
                            step_metrics[k] = step_metrics.get(k, 0.0) + float(v) / cfg.grad_accum
                    if not math.isfinite(step_metrics.get("loss", 0.0)):
                        raise RuntimeError(f"loss became {step_metrics['loss']} at step {self.step + 1}; "
                                           "lower train.lr or check the data")
                    for cb in self.callbacks:
                        if hasattr(cb, "before_optimizer_step"):
                            cb.before_optimizer_step(self.step + 1)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    snapshot = None
                    for cb in self.callbacks:
                        if hasattr(cb, "after_optimizer_step"):
                            cb.after_optimizer_step(self.step)
                    window_tokens += tokens * self.dist.world_size
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        elapsed = time.perf_counter() - window_start
                        record = {"step": self.step, **{k: round(v, 6) for k, v in step_metrics.items()},
                                  "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                                  "tokens_per_s": round(window_tokens / max(elapsed, 1e-9), 1)}
                        for cb in self.callbacks:
                            if hasattr(cb, "metrics"):
                                record.update(cb.metrics())
                        if self.dist.is_main:
                            self.run.log_metrics(record)
                        last = record
                        window_tokens, window_start = 0, time.perf_counter()
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_metrics.get('loss', float('nan')):.4f}",
                                    tok_s=f"{last.get('tokens_per_s', 0):.0f}")
                    if self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                        self.save_checkpoint()
                    if stop_after_step is not None and self.step >= stop_after_step:
                        if self.step % cfg.save_every:
                            self.save_checkpoint()
                        return {"interrupted": True, "step": self.step, "last": last}
            except KeyboardInterrupt:  # Ctrl+C or SIGTERM (Terminated): keep the step reached
                if locals().get("snapshot") is not None:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.data_state.load_state_dict(snapshot[0])
                    _set_rng_state(snapshot[1])
                self.save_checkpoint()
                raise
            finally:
                bar.close()
        return {"interrupted": False, "step": self.step, "last": last}
