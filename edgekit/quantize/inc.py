"""8-bit PyTorch models through Intel Neural Compressor 3.x (``neural_compressor.torch.quantization``).

INC 3.10 quantizes PyTorch models on CPU through PT2E: the model is captured with ``torch.export``
(``neural_compressor.torch.export.export``), torchao's ``X86InductorQuantizer`` annotates it,
and ``quantize`` / ``prepare``+``convert`` return a graph module in QDQ form (quantize and
dequantize nodes around fp32 ops). That graph gives int8 numerics in eager mode; int8 *speed*
needs ``torch.compile`` (Inductor lowers the QDQ patterns to oneDNN int8 kernels on x86).

- ``"dynamic"``: int8 weights (``DynamicQuantConfig``: symmetric per tensor by default),
  activations quantized per call. INC 3.10 computes the weight scales with observers that
  only see data when a calibration function runs: ``quantize(model, DynamicQuantConfig())``
  without ``run_fn`` leaves them empty and the model outputs all zeros. We always pass one
  forward pass as ``run_fn``.
- ``"static"``: int8 weights per channel and uint8 activations whose ranges are calibrated on
  sample texts (``StaticQuantConfig``).
- with ``eval_fn``: INC's accuracy-driven ``autotune`` tries the approach's configurations
  (symmetric/asymmetric activations, minmax/KL ranges, per-channel/per-tensor weights) until one
  loses at most ``tolerable_loss`` (relative) of the float model's score.

Only ``nn.Linear`` layers are quantized (INC's white list); embeddings stay float. Weights are
quantized symmetrically, so pruned zeros stay zero (``weight_zero_masks`` reads them back).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.errors import UserError

__all__ = ["APPROACHES", "ExitLogits", "builtin_eval_fn", "load_quantized", "quantize_classifier", "quantize_pytorch",
           "weight_zero_masks"]

APPROACHES = ("dynamic", "static")
QUANTIZED_FILE = "quantized_model.pt2"
RESULTS_FILE = "quantize.json"


class ExitLogits(nn.Module):
    """(input_ids, attention_mask) -> logits at ``exit_layer``: the tensor-only function INC exports."""

    def __init__(self, classifier, exit_layer: int | None = None):
        super().__init__()
        self.classifier, self.exit_layer = classifier, exit_layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(input_ids, attention_mask, exit_layer=self.exit_layer).logits[-1]


def _inc():
    # neural_compressor must come after transformers (it patches modules transformers also imports).
    import transformers  # noqa: F401
    import neural_compressor.torch.quantization as inc

    return inc


def _batch_dim():
    """Inputs (input_ids, attention_mask) with a free batch dimension; the length stays static."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    return ({0: batch}, {0: batch})


def _export(module: nn.Module, example_inputs: tuple):
    from neural_compressor.torch.export import export

    _inc()
    exported = export(module.eval(), example_inputs, dynamic_shapes=_batch_dim())
    if exported is None:  # INC logs the torch.export error and returns None
        raise RuntimeError("torch.export could not capture the classifier for INC; see the log above")
    return exported


def _config(approach: str, tuning: bool):
    inc = _inc()
    if approach == "dynamic":
        if tuning:
            return inc.DynamicQuantConfig(w_granularity=["per_tensor", "per_channel"], act_sym=[False, True])
        return inc.DynamicQuantConfig()
    if tuning:
        return inc.StaticQuantConfig(act_sym=[False, True], act_algo=["minmax", "kl"],
                                     w_granularity=["per_channel", "per_tensor"])
    return inc.StaticQuantConfig()


def quantize_classifier(model, approach: str, calibration: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        exit_layer: int | None = None, eval_fn: Callable[[nn.Module], float] | None = None,
                        tolerable_loss: float = 0.01, max_trials: int = 8) -> nn.Module:
    """An int8 graph module computing ``ExitLogits(model, exit_layer)``.

    ``calibration``: (input_ids, attention_mask) batches of one sequence length, the module's
    static length (the batch dimension stays free; the first batch, of at least 2 rows, is the
    example export traces with). Static quantization calibrates on all of them, dynamic runs the first.
    ``eval_fn(module) -> score`` (higher is better) switches on INC's ``autotune``.
    """
    if approach not in APPROACHES:
        raise UserError(f"approach must be one of {', '.join(APPROACHES)}, got {approach!r}.")
    if not calibration:
        raise UserError("INC quantization needs at least one tokenized batch (calibration_texts).")
    inc = _inc()
    classifier = copy.deepcopy(model).float().eval()
    example = tuple(calibration[0])
    exported = _export(ExitLogits(classifier, exit_layer), example)
    batches = calibration if approach == "static" else calibration[:1]

    def run_fn(prepared):
        with torch.no_grad():
            for input_ids, attention_mask in batches:
                prepared(input_ids, attention_mask)

    if eval_fn is not None:
        # TuningConfig documents "a single config or a list", but INC 3.10's autotune iterates it: pass a list.
        tune = inc.TuningConfig(config_set=[_config(approach, tuning=True)], tolerable_loss=tolerable_loss,
                                max_trials=max_trials)
        return inc.autotune(exported, tune, eval_fn=eval_fn, run_fn=run_fn, example_inputs=example)
    return inc.quantize(exported, _config(approach, tuning=False), run_fn=run_fn, example_inputs=example)


# ---------------------------------------------------------------------------------------------
# Reading the quantized weights back


def weight_zero_masks(quantized: nn.Module) -> list[tuple[str, np.ndarray]]:
    """(weight name, mask of int8 values equal to the zero point) for every quantized weight.

    The QDQ graph keeps fp32 weights and quantizes them in ``forward``; this replays each weight's
    quantize node on the stored weight, so the masks are exactly the int8 values the model uses.
    """
    def value(arg):
        if isinstance(arg, torch.fx.Node):
            if arg.op != "get_attr":
                return None
            obj = quantized
            for part in arg.target.split("."):
                obj = getattr(obj, part)
            return obj
        return arg

    out = []
    for node in quantized.graph.nodes:
        if node.op != "call_function" or "quantize_per_" not in str(node.target) or "dequantize" in str(node.target):
            continue
        weight = node.args[0]
        if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr":
            continue  # an activation
        args = [value(a) for a in node.args]
        if any(a is None for a in args):
            continue
        with torch.no_grad():
            q = node.target(*args)
        zero_point = args[2]
        if isinstance(zero_point, torch.Tensor) and zero_point.numel() > 1:
            shape = [1] * q.dim()
            shape[args[3]] = -1
            zero_point = zero_point.reshape(shape)
        out.append((weight.target, (q == zero_point).numpy()))
    return out


# ---------------------------------------------------------------------------------------------
# The stage: checkpoint directory in, quantized directory out


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
                     max_length: int = 128, tolerable_loss: float = 0.01,
                     max_trials: int = 8) -> dict:
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
        max_length: the static sequence length of the int8 module (its batch size is free).

    Writes ``quantized_model.pt2`` (a ``torch.export`` program; ``load_quantized`` reads it),
    INC's configuration ``qconfig.json``, the tokenizer, ``config.json``, ``edgekit.json`` and ``quantize.json``
    (the report, also returned).
    """
    from edgekit.checkpoint import check_model_dir, load_tokenizer, read_meta
    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.io import atomic_dir, versions, write_json
    from edgekit.quantize.checks import agreement, pruned_masks, zeros_kept

    if approach not in APPROACHES:
        raise UserError(f"approach must be one of {', '.join(APPROACHES)}, got {approach!r}.")
    if approach == "static" and not calibration_texts:
        raise UserError("static quantization needs calibration_texts (a few dozen sentences like the ones "
                        "the model will see); or use approach='dynamic'.")
    if eval_labels is not None and eval_texts is None:
        raise UserError("eval_labels need the eval_texts they label.")
    model_dir = check_model_dir(model_dir)
    tokenizer = load_tokenizer(model_dir)
    classifier = EarlyExitClassifier.from_pretrained(model_dir).eval()
    if exit_layer is not None:
        from edgekit.early_exit import _check_layer

        _check_layer("exit_layer", exit_layer, classifier.depth)

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
    with atomic_dir(out_dir) as tmp:
        # What INC's PT2E save does, under a .pt2 name torch.export.load accepts without a warning
        # (neural_compressor.torch.quantization.save(model, dir) passes dir as the example inputs).
        program = torch.export.export(quantized, example, dynamic_shapes=_batch_dim())
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
    return torch.export.load(str(file)).module()
