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
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from edgekit.errors import UserError

__all__ = ["APPROACHES", "ExitLogits", "batch_dim", "quantize_classifier", "weight_zero_masks"]

APPROACHES = ("dynamic", "static")


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


def batch_dim():
    """Inputs (input_ids, attention_mask) with a free batch dimension; the length stays static."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    return ({0: batch}, {0: batch})


def _export(module: nn.Module, example_inputs: tuple):
    from neural_compressor.torch.export import export

    _inc()
    exported = export(module.eval(), example_inputs, dynamic_shapes=batch_dim())
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
# Accuracy-aware int8 for the exported graphs: which modules stay float

# The fallback ladder INC walks, cheapest loss of int8 first: the head (run once per exit, it
# carries most of the logit error at deep exits: keeping it float halved the mean |Δlogit| at
# exit 24 of the distilled paper shape, benchmarks/int8_depth.md), then the shared layer's
# MatMuls, most sensitive first (each alone in int8, the attention query and output projections
# moved the logits most on a trained 24-application model), then the embedding projection.
FALLBACK_LADDER = ("classifier", "pooler", "attention/dense", "attention/query", "attention/key", "attention/value",
                   "ffn", "ffn_output", "project")
_LAYER = "classifier.model.albert.encoder.albert_layer_groups.0.albert_layers.0."
_MODULES = {"classifier": "classifier.model.classifier", "pooler": "classifier.model.albert.pooler",
            "project": "classifier.model.albert.encoder.embedding_hidden_mapping_in",
            **{m: _LAYER + m.replace("/", ".") for m in ("attention/dense", "attention/query", "attention/key",
                                                         "attention/value", "ffn", "ffn_output")}}


class AllExitLogits(nn.Module):
    """(input_ids, attention_mask) -> logits of every exit, (K, B, C): what the parity gate judges."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(input_ids, attention_mask).logits


def worst_exit_agreement(reference: torch.Tensor, got: torch.Tensor) -> float:
    """min over exits k of (1/N) · #{i : argmax got_ki = argmax reference_ki}; (K, N, C) logits each."""
    return float((reference.argmax(-1) == got.argmax(-1)).float().mean(-1).min())


def float_modules_by_inc(model, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], min_agreement: float = 0.99,
                         ladder: Sequence[str] = FALLBACK_LADDER) -> list[str]:
    """The modules int8 export should keep in float, decided by INC's accuracy-driven ``autotune``.

    INC tries dynamic int8 with the first n modules of ``ladder`` in float (n = 0, 1, ...) and stops
    at the first whose worst-exit argmax agreement with the float model on ``batches`` (texts of the
    task, one length) is at least ``min_agreement`` (``tolerable_loss = 1 - min_agreement`` of the
    float model's agreement 1.0). Returns those n modules, by their graph names (``ladder``'s). Raises
    ``UserError`` if even the whole ladder in float stays below the target.
    """
    if not batches:
        raise UserError("accuracy-aware int8 needs texts to judge on (--task with --data-dir, or --samples FILE).")
    inc = _inc()
    classifier = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        reference = torch.cat([classifier(i, m).logits for i, m in batches], dim=1)
    exported = _export(AllExitLogits(classifier), tuple(batches[0]))
    scores = []

    def eval_fn(candidate) -> float:
        with torch.no_grad():
            got = torch.cat([candidate(i, m) for i, m in batches], dim=1)
        scores.append(worst_exit_agreement(reference, got))
        return scores[-1]

    def run_fn(prepared):
        with torch.no_grad():
            prepared(*batches[0])

    configs = []
    for n in range(len(ladder) + 1):
        config = inc.DynamicQuantConfig()
        for name in ladder[:n]:
            config.set_local(_MODULES[name], inc.DynamicQuantConfig(w_dtype="fp32", act_dtype="fp32"))
        configs.append(config)
    tune = inc.TuningConfig(config_set=configs, tolerable_loss=1.0 - min_agreement, max_trials=len(configs))
    inc.autotune(exported, tune, eval_fn=eval_fn, run_fn=run_fn, example_inputs=tuple(batches[0]))
    # INC scores the float model first (scores[0]), then one config per trial until one passes.
    trials = scores[1:]
    if not trials or trials[-1] < min_agreement:
        raise UserError(f"int8 keeps at best {max(trials, default=0.0):.1%} of the float model's predictions at its "
                        f"worst exit even with {', '.join(ladder)} in float, below the {min_agreement:.1%} asked for; "
                        "export fp32, or lower the target knowingly.")
    return list(ladder[:len(trials) - 1])
