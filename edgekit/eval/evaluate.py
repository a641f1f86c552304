"""``edgekit eval``: accuracy overall and per exit layer, on checkpoints and on exported bundles.

A bundle is run through the torch-free device runtime (``export/edgekit_device``), the same code
path the phone app follows, so the accuracy of what ships is what gets reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekit.errors import UserError
from edgekit.progress import batch_starts
from edgekit.tasks import load_split


def _label_index(model_labels: list[str], task) -> np.ndarray:
    """Task class id -> model class id, matched by label name."""
    index = {str(name): i for i, name in enumerate(model_labels)}
    missing = [name for name in task.labels if str(name) not in index]
    if missing:
        raise UserError(f"the model's labels ({', '.join(map(str, model_labels[:6]))}...) do not include the task's "
                        f"label '{missing[0]}'; evaluate a model fine-tuned on task '{task.name}'.")
    return np.array([index[str(name)] for name in task.labels])


def is_bundle(path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def _eval_bundle(path, texts, batch_size, threads):
    from edgekit_device import Predictor

    predictor = Predictor(path, threads=threads)
    per_exit_pred = []
    start = time.perf_counter()
    for s in batch_starts(len(texts), batch_size, "eval bundle"):
        ids, mask = predictor.encode(texts[s:s + batch_size])
        per_exit_pred.append(predictor.exit_logits(ids, mask).argmax(-1))  # (K, B)
    seconds = time.perf_counter() - start
    exits = predictor.exits if predictor.bundle.layout == "fixed" else list(range(1, predictor.depth + 1))
    return np.concatenate(per_exit_pred, axis=1), list(predictor.labels), exits, seconds, predictor.bundle.manifest


def _eval_checkpoint(path, texts, batch_size, max_length):
    import torch

    from edgekit.checkpoint import check_model_dir, load_config_of, load_tokenizer, read_meta
    from edgekit.data import TokenizedCorpus
    from edgekit.finetune import ClassifierModule

    path = check_model_dir(path)
    config = load_config_of(path)
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise UserError(f"'{path}' is not a fine-tuned classifier; run `edgekit finetune` on it first.")
    if config.model_type == "albert":
        from edgekit.early_exit import EarlyExitClassifier

        model = EarlyExitClassifier.from_pretrained(path)
    else:
        from edgekit.finetune.pooling import load_sequence_classifier

        model = load_sequence_classifier(path)  # pools as config.json says (mean for e5)
    module = ClassifierModule(model, early_exit=True).eval()
    tokenizer = load_tokenizer(path)
    max_length = max_length or read_meta(path).get("max_length", 128)
    data = TokenizedCorpus(tokenizer, texts, max_length)
    preds = []
    start = time.perf_counter()
    with torch.no_grad():
        for s in batch_starts(len(data), batch_size, "eval checkpoint"):
            preds.append(module.exit_logits(data.collate(range(s, min(s + batch_size, len(data))))).argmax(-1).numpy())
    seconds = time.perf_counter() - start
    id2label = config.id2label
    labels = [id2label[i] for i in range(len(id2label))]
    k = preds[0].shape[0]
    return np.concatenate(preds, axis=1), labels, list(range(1, k + 1)), seconds, None


def late_interaction_of(path) -> bool:
    """Whether ``path`` (a checkpoint or bundle) is a late-interaction model, evaluated on segments."""
    import json

    bundle = is_bundle(path)
    try:
        data = json.loads((Path(path) / ("manifest.json" if bundle else "config.json")).read_text(encoding="utf-8"))
        return data.get("layout") == "late-interaction" if bundle else bool(data.get("late_interaction"))
    except (OSError, ValueError, AttributeError):
        return False  # the loaders report a missing or damaged file in one sentence


def _eval_segments(path, examples: list[list[str]], batch_size: int, threads):
    """Late interaction: each distinct segment encoded once (as a server's cache would), then ``interact``."""
    from edgekit.late_interaction import load_segment_model
    from edgekit.late_interaction.data import fit_segments

    model = load_segment_model(path, threads=threads) if is_bundle(path) else load_segment_model(path)
    preds, cache = [], {}
    start = time.perf_counter()
    for s in batch_starts(len(examples), batch_size, "eval segments"):
        batch = [fit_segments(ex, model.max_segments) for ex in examples[s:s + batch_size]]  # as in training
        new = sorted({seg for ex in batch for seg in ex if seg not in cache})
        cache.update(zip(new, model.encode_segments(new)))
        preds.append(model.interact([[cache[seg] for seg in ex] for ex in batch]).argmax(-1))
    seconds = time.perf_counter() - start
    manifest = getattr(getattr(model, "bundle", None), "manifest", None)
    depth = manifest["exits"]["layers"][-1] if manifest else model.model.depth
    return np.concatenate(preds)[None], list(model.labels), [depth], seconds, manifest


def evaluate(path, task: str, data_dir=None, split: str = "dev", text_field=None, text_pair_field=None,
             label_field=None, batch_size: int = 32, max_examples: int | None = None, max_length: int | None = None,
             threads: int | None = None, test_file: str | None = None, provenance=None) -> dict:
    """Accuracy of a checkpoint or bundle on ``task``'s ``split``: overall (deepest exit) and per exit.

    ``split`` is ``train``, ``dev``, ``test`` or (tasks read from files) a file stem; a split the
    task does not have is an error, never a silent fallback to dev (``edgekit.tasks.load_split``)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"'{path}' does not exist; pass a fine-tuned model directory or an exported bundle.")
    from edgekit.checkpoint import resolve_model_dir

    p = resolve_model_dir(p, bundles=True)  # a run directory names the model or bundle it wrote
    late = late_interaction_of(p)
    t, data = load_split(task, split, data_dir, text_field, text_pair_field, label_field, test_file, provenance,
                         segmented=late)
    n = len(data) if max_examples is None else min(max_examples, len(data))
    texts, gold = data.texts[:n], np.array(data.labels[:n])
    if late:
        preds, labels, exits, seconds, manifest = _eval_segments(p, data.segments[:n], batch_size, threads)
        kind = ("bundle (late-interaction, " + manifest["precision"] + ")") if manifest else \
            "checkpoint (PyTorch, late-interaction)"
    elif is_bundle(p):
        preds, labels, exits, seconds, manifest = _eval_bundle(p, texts, batch_size, threads)
        kind = f"bundle ({manifest['format']}, {manifest.get('precision', 'fp32')})"
    else:
        preds, labels, exits, seconds, manifest = _eval_checkpoint(p, texts, batch_size, max_length)
        kind = "checkpoint (PyTorch)"
    mapped = _label_index(labels, t)[gold]
    per_exit = [float((row == mapped).mean()) for row in preds]
    return {
        "model": str(p), "kind": kind, "task": t.name, "split": split, "examples": n, "note": t.note,
        "accuracy": per_exit[-1], "exit_layers": exits, "accuracy_per_exit": per_exit,
        "seconds": round(seconds, 3), "ms_per_example_all_exits": round(1000 * seconds / max(n, 1), 3),
    }
