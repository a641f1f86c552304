"""``edgekit quantize``: a classifier checkpoint directory in, an int8 PyTorch program out.

``quantize_pytorch`` tokenizes the calibration and evaluation texts, calls Neural Compressor
(``inc.quantize_classifier``), checks the result against the float model (``checks``) and writes
the program with its report; ``load_quantized`` reads it back.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.quantize.inc import APPROACHES, ExitLogits, batch_dim, quantize_classifier, weight_zero_masks

QUANTIZED_FILE = "quantized_model.pt2"
RESULTS_FILE = "quantize.json"


def _tokenize(tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 32):
    texts = [t for t in texts if t and t.strip()]
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
        batches.append((enc["input_ids"], enc["attention_mask"]))
    return batches


def _logits(module: nn.Module, batches) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(ids, mask).float().numpy() for ids, mask in batches])


def builtin_eval_fn(reference: np.ndarray, batches, labels: np.ndarray | None = None) -> Callable[[nn.Module], float]:
    """An ``eval_fn`` for autotune: accuracy on ``labels``, or argmax agreement with the float
    ``reference`` logits when there are no labels."""
    target = reference.argmax(-1) if labels is None else np.asarray(labels)

    def score(module: nn.Module) -> float:
        return float((_logits(module, batches).argmax(-1) == target).mean())

    return score


def quantize_pytorch(model_dir, out_dir, approach: str = "dynamic", calibration_texts: Sequence[str] | None = None,
                     eval_fn: Callable[[nn.Module], float] | str | None = None, eval_texts: Sequence[str] | None = None,
                     eval_labels: Sequence[int] | None = None, exit_layer: int | None = None,
                     max_length: int | None = None, tolerable_loss: float = 0.01,
                     max_trials: int = 8, overwrite: bool = False) -> dict:
    """Quantize the classifier in ``model_dir`` with INC and write it to ``out_dir``.

    Args:
        approach: ``"dynamic"`` or ``"static"`` (calibrated on ``calibration_texts``).
        calibration_texts: sample texts; required for static, optional for dynamic (one forward
            pass is enough, so a placeholder input is used when none are given).
        eval_fn: ``eval_fn(module) -> score``, higher is better; ``module(input_ids,
            attention_mask)`` returns logits. Given, INC's ``autotune`` picks the configuration.
            ``"builtin"``: accuracy on ``eval_labels``, or argmax agreement with fp32 without labels.
        eval_texts, eval_labels: the evaluation set of the report (default: the calibration
            texts): argmax agreement, logit errors and, with labels, accuracy of int8 vs fp32.
        exit_layer: the exit the quantized module computes (default: the last layer).
        max_length: the static sequence length of the int8 module (its batch size is free); default:
            the length the model was fine-tuned with, else 128.
        overwrite: replace ``out_dir`` if it is an int8 model edgekit wrote earlier (a directory
            edgekit did not write is never replaced).

    Writes ``quantized_model.pt2`` (a ``torch.export`` program; ``load_quantized`` reads it),
    INC's configuration ``qconfig.json``, the tokenizer, ``config.json``, ``edgekit.json`` and ``quantize.json``
    (the report, also returned).
    """
    from edgekit.checkpoint import check_model_dir, default_max_length, load_config_of, load_tokenizer, read_meta
    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.io import atomic_dir, check_out, versions, write_json
    from edgekit.quantize.checks import agreement, pruned_masks, zeros_kept

    check_out(out_dir, "int8-model", overwrite)  # before the work, and again when writing

    if approach not in APPROACHES:
        raise UserError(f"approach must be one of {', '.join(APPROACHES)}, got {approach!r}.")
    if approach == "static" and not calibration_texts:
        raise UserError("static quantization needs calibration_texts (a few dozen sentences like the ones "
                        "the model will see); or use approach='dynamic'.")
    if eval_labels is not None and eval_texts is None:
        raise UserError("eval_labels need the eval_texts they label.")
    model_dir = check_model_dir(model_dir)
    if "AlbertForSequenceClassification" not in (getattr(load_config_of(model_dir), "architectures", None) or []):
        raise UserError(f"'{model_dir}' is not a fine-tuned classifier; run `edgekit finetune` on it first.")
    max_length = max_length or default_max_length(model_dir)
    tokenizer = load_tokenizer(model_dir)
    classifier = EarlyExitClassifier.from_pretrained(model_dir).eval()
    if exit_layer is not None:
        from edgekit.albert import check_layer

        check_layer("exit_layer", exit_layer, classifier.depth)

    # torch.export specializes a batch of 1, so the traced example has two rows.
    calibration = _tokenize(tokenizer, list(calibration_texts or []) or [tokenizer.unk_token or "."] * 2, max_length)
    if not calibration or calibration[0][0].shape[0] < 2:
        raise UserError("calibration needs at least 2 non-empty texts.")
    evaluation = _tokenize(tokenizer, eval_texts, max_length) if eval_texts else calibration
    examples = sum(ids.shape[0] for ids, _ in evaluation)
    if eval_labels is not None and len(eval_labels) < examples:
        raise UserError("there are fewer eval_labels than eval_texts; pass one label per text.")

    reference = _logits(ExitLogits(classifier, exit_layer), evaluation)
    labels = None if eval_labels is None else np.asarray(eval_labels[:len(reference)])
    if eval_fn == "builtin":
        eval_fn = builtin_eval_fn(reference, evaluation, labels)
    elif eval_fn is not None and not callable(eval_fn):
        raise UserError(f"eval_fn must be a function of the quantized module or 'builtin', got {eval_fn!r}.")

    start = time.perf_counter()
    quantized = quantize_classifier(classifier, approach, calibration, exit_layer, eval_fn, tolerable_loss, max_trials)
    seconds = time.perf_counter() - start
    if quantized is None:
        raise UserError(f"INC's autotune found no configuration within tolerable_loss={tolerable_loss} in "
                        f"{max_trials} trials; raise tolerable_loss or max_trials.")

    logits = _logits(quantized, evaluation)
    zeros = zeros_kept({n: m for n, m in pruned_masks(classifier).items() if "embeddings" not in n},
                       weight_zero_masks(quantized))
    report = {
        "approach": approach,
        "autotune": eval_fn is not None,
        "exit_layer": exit_layer or classifier.depth,
        "input_shape": ["batch", max_length],
        "seconds": round(seconds, 2),
        "agreement": agreement(reference, logits, labels),
        "zeros": {"pruned_linear_zeros": zeros.pruned_zeros, "kept": zeros.kept_zeros, "all_kept": zeros.all_kept},
        "qconfig": {str(k): v.to_dict() for k, v in getattr(quantized, "qconfig", {}).items()},
        "versions": versions(),
    }
    example = tuple(calibration[0])
    with atomic_dir(out_dir, "int8-model", overwrite) as tmp:
        # What INC's PT2E save does, under a .pt2 name torch.export.load accepts without a warning
        # (neural_compressor.torch.quantization.save(model, dir) passes dir as the example inputs).
        program = torch.export.export(quantized, example, dynamic_shapes=batch_dim())
        torch.export.save(program, str(tmp / QUANTIZED_FILE))
        write_json(tmp / "qconfig.json", report["qconfig"])
        tokenizer.save_pretrained(tmp)
        classifier.model.config.save_pretrained(tmp)
        write_json(tmp / "edgekit.json", {**read_meta(model_dir), "stage": "quantize", "quantize": {
            "tool": "neural_compressor.torch", "approach": approach, "exit_layer": report["exit_layer"],
            "input_shape": report["input_shape"], "file": QUANTIZED_FILE}})
        write_json(tmp / RESULTS_FILE, report)
    return report


def load_quantized(path) -> nn.Module:
    """The module ``quantize_pytorch`` wrote: ``module(input_ids, attention_mask) -> logits``."""
    file = Path(path) / QUANTIZED_FILE
    if not file.is_file():
        raise UserError(f"'{path}' has no {QUANTIZED_FILE}; pass a directory written by quantize_pytorch.")
    # torch.export.load retries a failed weights-only load of the program's constants as a full
    # unpickling, which would run code from the file: forbid that retry.
    with _weights_only_loads():
        try:
            program = torch.export.load(str(file))
        except Exception as e:  # noqa: BLE001 (whatever the file holds, the answer is one sentence)
            raise UserError(f"'{file}' is not an int8 program this edgekit reads ({type(e).__name__}); quantize the "
                            "model again with `edgekit quantize`.") from None
    return program.module()


@contextlib.contextmanager
def _weights_only_loads():
    """Every ``torch.load`` in the block loads tensors and plain data only, even where a library
    asks for a full unpickling (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``)."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous
