"""One frozen base serving many tasks, in batches that mix them (M6-Rec 3.4: "deploy one single
model for serving multiple tasks").

``TaskBank`` loads task files of the frozen-base methods (``prompt``, ``option``,
``option-adapter``) onto one base and stacks their parameters, one row per task: soft prompts
(padded to the longest prompt set, with each task's count), special-token embeddings, classifier
weights (soft options through the model's projection, or the head), FFN adapters (padded to the
largest rank; depth-shared adapters repeated per depth; tasks without adapters get λ = 0, which
adds exactly 0). A batch of (task, text) pairs gathers each example's row, so every example is
computed as a batch of its own task would compute it (``model.insert_prompts``,
``adapter.adapter_delta`` per example); results equal single-task runs to float tolerance.

Python API::

    from edgekit.tune import TaskBank
    bank = TaskBank("e5-small", ["runs/tnews/task.safetensors", "runs/csl/task.safetensors"])
    bank.predict([("tnews", "上海的房价又涨了"), ("csl", "关键词。摘要")])
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from edgekit.albert import mean_pool
from edgekit.errors import UserError
from edgekit.tune.model import FROZEN_BASE, Base, TaskParams, TuneSpec, insert_prompts, replace_special, special_token_ids
from edgekit.tune.options import option_logits, soft_options
from edgekit.tune.taskfile import check_base, load_task_tensors, read_task_meta


def _resolve_base(base) -> Path:
    from edgekit.checkpoint import check_model_dir

    return check_model_dir(base, builtin=True)


class TaskBank:
    """Task files on one frozen base; ``predict``/``logits`` take (task, text) pairs of any mix."""

    def __init__(self, base, task_files, device: str = "cpu"):
        from edgekit.checkpoint import load_encoder, load_tokenizer

        base_dir = _resolve_base(base)
        named = task_files.items() if isinstance(task_files, dict) else [(None, f) for f in task_files]
        metas: dict[str, dict] = {}
        for name, path in named:
            meta = read_task_meta(path)
            if meta["method"] not in FROZEN_BASE:
                raise UserError(f"task file '{path}' was tuned with {meta['method']}, which changes the base; a task "
                                f"bank serves tasks that keep it frozen ({', '.join(FROZEN_BASE)}).")
            check_base(meta, base_dir)
            name = name or meta["task"]
            if name in metas:
                raise UserError(f"two task files are for task '{name}' ({metas[name]['path']}, {meta['path']}); "
                                "pass a dict {name: file} to tell them apart.")
            metas[name] = meta
        if not metas:
            raise UserError("no task files given; pass at least one task.safetensors from `edgekit tune`.")
        self.base_dir, self.device = base_dir, torch.device(device)
        self.tokenizer = load_tokenizer(base_dir)
        self.base = Base(load_encoder(base_dir, frozen=True)).to(self.device).eval()
        self.tasks = list(metas)
        self.meta = metas
        self.index = {name: i for i, name in enumerate(self.tasks)}
        self.special_ids = special_token_ids(self.tokenizer)
        with torch.no_grad():
            self._stack([self._load(metas[name]) for name in self.tasks])

    def _load(self, meta: dict) -> tuple[TuneSpec, TaskParams]:
        spec = TuneSpec(**meta["spec"])
        if spec.special_ids and spec.special_ids != self.special_ids:
            raise UserError(f"task file '{meta['path']}' trained special tokens {spec.special_ids}, but the base's "
                            f"tokenizer has {self.special_ids}; tune it again on this base.")
        params = TaskParams(spec, self.base)
        tensors = {k.removeprefix("task."): v for k, v in load_task_tensors(meta).items()}
        params.load_state_dict(tensors)
        return spec, params.to(self.device)

    def _stack(self, loaded: list[tuple[TuneSpec, TaskParams]]) -> None:
        base, n = self.base, len(loaded)
        dev, width, hidden = self.device, base.width, base.hidden
        self.num_labels = [spec.num_labels for spec, _ in loaded]
        n_max, c_max = max(spec.prompts for spec, _ in loaded), max(self.num_labels)
        self.counts = torch.tensor([spec.prompts for spec, _ in loaded], device=dev)
        self.prompts = torch.zeros(n, n_max, width, device=dev)
        own = base.word_embeddings.weight[torch.tensor(self.special_ids, dtype=torch.long, device=dev)]
        self.special = own.expand(n, -1, -1).clone()
        self.weights = torch.zeros(n, c_max, hidden, device=dev)
        self.bias = torch.zeros(n, c_max, device=dev)
        self.mean_pooling = torch.tensor([spec.pooling == "mean" for spec, _ in loaded], device=dev)
        ranks = [p.adapters.rank for _, p in loaded if p.adapters is not None]
        self.adapters = None
        if ranks:
            r, depth = max(ranks), base.depth
            self.adapters = (torch.zeros(n, depth, device=dev), torch.zeros(n, depth, hidden, r, device=dev),
                             torch.zeros(n, depth, r, device=dev), torch.zeros(n, depth, r, hidden, device=dev),
                             torch.zeros(n, depth, hidden, device=dev))
        for i, (spec, p) in enumerate(loaded):
            self.prompts[i, :spec.prompts] = p.prompts
            if p.special is not None:
                self.special[i] = p.special
            if p.head is not None:
                self.weights[i, :spec.num_labels], self.bias[i, :spec.num_labels] = p.head.weight, p.head.bias
            else:
                self.weights[i, :spec.num_labels] = base.to_hidden(soft_options(p.prompts, spec.num_labels))
            if p.adapters is not None:
                lam, w1, b1, w2, b2 = (x.expand(base.depth, *x.shape[1:]) for x in p.adapters.stacked())
                rank = p.adapters.rank
                self.adapters[0][i] = lam
                self.adapters[1][i, :, :, :rank] = w1
                self.adapters[2][i, :, :rank] = b1
                self.adapters[3][i, :, :rank] = w2
                self.adapters[4][i] = b2

    def _encode(self, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        by_length: dict[int, list[int]] = {}  # one tokenizer call per max_length
        for i, (task, _) in enumerate(pairs):
            if task not in self.index:
                raise UserError(f"task '{task}' is not in this bank; it serves {', '.join(self.tasks)}.")
            by_length.setdefault(self.meta[task]["max_length"], []).append(i)
        rows: list[list[int]] = [[] for _ in pairs]
        for max_length, members in by_length.items():
            encoded = self.tokenizer([pairs[i][1] for i in members], truncation=True, max_length=max_length)
            for i, ids in zip(members, encoded["input_ids"]):
                rows[i] = ids
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        task = torch.tensor([self.index[t] for t, _ in pairs])
        return ids.to(self.device), mask.to(self.device), task.to(self.device)

    @torch.no_grad()
    def logits(self, pairs) -> list[torch.Tensor]:
        """Each (task, text)'s logits over its task's classes, all pairs in one mixed batch."""
        if not pairs:
            return []
        ids, mask, task = self._encode(pairs)
        base = self.base
        embeds = replace_special(base.word_embeddings(ids), ids, self.special_ids, self.special[task])
        embeds, mask = insert_prompts(embeds, mask, self.prompts[task], self.counts[task])
        adapters = tuple(a[task] for a in self.adapters) if self.adapters is not None else None
        hidden = base.encode(embeds, mask, adapters, per_example=True)
        summary = torch.where(self.mean_pooling[task][:, None], mean_pool(hidden, mask), hidden[:, 0])
        logits = option_logits(summary, self.weights[task]) + self.bias[task]
        return [logits[b, :self.num_labels[t]].cpu() for b, t in enumerate(task.tolist())]

    def predict(self, pairs, batch_size: int = 64, sort_by_length: bool = True) -> list[dict]:
        """{task, label, label_id, score} per (task, text), in the order given, computed in mixed
        batches of ``batch_size``; ``sort_by_length`` batches texts of similar length together
        (whatever their tasks), so short texts are not padded to long ones."""
        order = list(range(len(pairs)))
        if sort_by_length:
            order.sort(key=lambda i: len(pairs[i][1]))
        out: list[dict | None] = [None] * len(pairs)
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            for i, row in zip(chunk, self.logits([pairs[i] for i in chunk])):
                task = pairs[i][0]
                probs = row.softmax(-1)
                k = int(probs.argmax())
                out[i] = {"task": task, "label": self.meta[task]["labels"][k], "label_id": k, "score": float(probs[k])}
        return out


def evaluate_tasks(base, task_files, tasks=None, data_dir=None, split: str = "dev", batch_size: int = 64,
                   max_examples: int | None = None, seed: int = 0) -> dict:
    """Accuracy per task of a ``TaskBank`` over one shuffled stream that mixes the tasks' ``split``.

    Task t's data is ``data_dir/t`` when that directory exists, else ``data_dir`` itself (one task).
    ``max_examples`` is per task (the first ones of the split).
    """
    from edgekit.tasks import load_task

    bank = TaskBank(base, task_files)
    names = list(tasks) if tasks else bank.tasks
    missing = [t for t in names if t not in bank.index]
    if missing:
        raise UserError(f"no task file for task '{missing[0]}'; the task files given are for {', '.join(bank.tasks)}.")
    if data_dir is None:
        raise UserError("--data-dir is needed: the directory holding each task's data as DATA_DIR/<task>.")
    stream = []
    for name in names:
        where = Path(data_dir) / name if (Path(data_dir) / name).is_dir() else Path(data_dir)
        task = load_task(name, where)
        data = getattr(task, split, None)
        if data is None:
            raise UserError(f"task '{name}' has no split '{split}'; choose dev (or test where the task has one).")
        if list(task.labels) != list(bank.meta[name]["labels"]):
            raise UserError(f"the task file for '{name}' was tuned on labels {bank.meta[name]['labels'][:4]}..., but the "
                            f"data in '{where}' has {task.labels[:4]}...; evaluate on the data it was tuned on.")
        n = len(data) if max_examples is None else min(max_examples, len(data))
        stream += [(name, data.texts[i], data.labels[i]) for i in range(n)]
    random.Random(seed).shuffle(stream)
    start = time.perf_counter()
    predictions = bank.predict([(t, text) for t, text, _ in stream], batch_size=batch_size)
    seconds = time.perf_counter() - start
    per_task = {name: {"correct": 0, "examples": 0} for name in names}
    for (name, _, label), pred in zip(stream, predictions):
        per_task[name]["examples"] += 1
        per_task[name]["correct"] += int(pred["label_id"] == label)
    for r in per_task.values():
        r["accuracy"] = r["correct"] / r["examples"]
    return {"kind": "task bank", "base": str(bank.base_dir), "split": split, "tasks": per_task,
            "methods": {name: bank.meta[name]["method"] for name in names}, "examples": len(stream),
            "accuracy": sum(r["correct"] for r in per_task.values()) / max(len(stream), 1),
            "seconds": round(seconds, 3), "examples_per_second": round(len(stream) / max(seconds, 1e-9), 2),
            "batch_size": batch_size}
