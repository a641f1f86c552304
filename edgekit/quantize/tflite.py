"""8-bit TFLite models through ai-edge-quantizer, and reading what a .tflite file holds.

Two schemes (M6-Rec section 3.5 ships 8-bit models to phones):

- ``"dynamic"``: int8 weights, per output channel, symmetric; activations stay float and the
  kernels quantize them on the fly (``recipe.dynamic_wi8_afp32``). No data needed.
- ``"full"``: int8 weights and int8 activations (``recipe.static_wi8_ai8``), activation ranges
  calibrated on sample inputs. The embedding table, which the static recipe leaves in float,
  gets int8 weights as in the dynamic scheme, so the file is as small as the dynamic one.

Weights are quantized symmetrically (zero point 0), so a weight pruned to 0.0 is stored as the
integer 0: sparsity survives quantization. ``weight_tensors`` reads the stored constants back
with the ``tflite`` flatbuffer package, which is how the tests count those zeros.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from edgekit.errors import UserError

__all__ = ["INT8_SCHEMES", "WeightTensor", "op_counts", "quantize_tflite", "weight_tensors"]

INT8_SCHEMES = ("dynamic", "full")

Feeds = Mapping[str, np.ndarray]


def quantize_tflite(float_model: bytes, scheme: str,
                    calibration: Mapping[str, Iterable[Feeds]] | Iterable[Feeds] | None = None) -> bytes:
    """The int8 version of a float .tflite model (bytes in, bytes out).

    ``calibration`` (scheme ``"full"`` only): sample inputs, as a list of ``{input name: array}``
    for a model with one signature, or ``{signature name: list of feeds}``. Inputs must have the
    model's exact shapes and dtypes.
    """
    from ai_edge_quantizer import qtyping, quantizer, recipe

    if scheme not in INT8_SCHEMES:
        raise UserError(f"int8 must be one of {', '.join(INT8_SCHEMES)} (or None for float), got {scheme!r}.")
    if scheme == "dynamic":
        q = quantizer.Quantizer(bytearray(float_model), recipe.dynamic_wi8_afp32())
        return bytes(q.quantize(enable_progress_report=False).quantized_model)

    if calibration is None:
        raise UserError("full int8 quantization needs calibration inputs (a few dozen tokenized sample texts); "
                        "pass calibration_inputs, or use int8='dynamic', which needs none.")
    q = quantizer.Quantizer(bytearray(float_model), recipe.static_wi8_ai8())
    # The static recipe leaves EMBEDDING_LOOKUP in float; int8 weights with a float output
    # (the dynamic kernel) shrink the largest table 4x and cost nothing at runtime.
    q.add_dynamic_config(".*", qtyping.TFLOperationName.EMBEDDING_LOOKUP, 8)
    if not isinstance(calibration, Mapping):
        calibration = {_only_signature(float_model): list(calibration)}
    calibration = {key: [dict(feeds) for feeds in samples] for key, samples in calibration.items()}
    if not any(calibration.values()):
        raise UserError("the calibration set is empty; pass at least one tokenized sample text.")
    result = q.calibrate(calibration, num_threads=1)
    return bytes(q.quantize(result, enable_progress_report=False).quantized_model)


def _only_signature(model: bytes) -> str:
    from ai_edge_litert.interpreter import Interpreter

    signatures = list(Interpreter(model_content=model).get_signature_list())
    if len(signatures) != 1:
        raise UserError(f"the model has signatures {signatures}; give calibration inputs per signature "
                        "as {signature name: list of feeds}.")
    return signatures[0]


# ---------------------------------------------------------------------------------------------
# Reading a .tflite flatbuffer


def _enum_names(enum_class) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def op_counts(model: bytes) -> collections.Counter:
    """How many times each builtin operator appears across the model's subgraphs."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    names = _enum_names(BuiltinOperator)
    m = tflite.Model.GetRootAsModel(model, 0)
    counts = collections.Counter()
    for s in range(m.SubgraphsLength()):
        graph = m.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            code = m.OperatorCodes(graph.Operators(i).OpcodeIndex())
            # Codes above 127 live in BuiltinCode, older ones in DeprecatedBuiltinCode.
            counts[names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")] += 1
    return counts


@dataclass
class WeightTensor:
    """A constant tensor stored in the model: raw stored values and their quantization."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    values: np.ndarray
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None

    axis: int = 0

    def zero_mask(self) -> np.ndarray:
        """Where the stored value means 0.0: the zero point of its channel, or 0 when not quantized."""
        zp = self.zero_points
        if zp is None or zp.size == 0:
            return self.values == 0
        if zp.size == 1:
            return self.values == zp.item()
        shape = [1] * self.values.ndim
        shape[self.axis] = -1
        return self.values == zp.reshape(shape)

    @property
    def zeros(self) -> int:
        return int(self.zero_mask().sum())


_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8, "UINT8": np.uint8,
          "INT16": np.int16, "INT32": np.int32, "INT64": np.int64}


def weight_tensors(model: bytes, min_elements: int = 2) -> list[WeightTensor]:
    """Every constant tensor with at least ``min_elements`` values (weights, tables, folded constants)."""
    import tflite
    from tflite.TensorType import TensorType

    type_names = _enum_names(TensorType)
    m = tflite.Model.GetRootAsModel(model, 0)
    out = []
    seen = set()
    for s in range(m.SubgraphsLength()):
        graph = m.Subgraphs(s)
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            if t.Buffer() in seen or t.Buffer() == 0:
                continue
            buffer = m.Buffers(t.Buffer())
            if buffer.DataLength() > 0:
                raw = buffer.DataAsNumpy().tobytes()
            elif buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
                raw = bytes(model[buffer.Offset():buffer.Offset() + buffer.Size()])
            else:
                continue
            dtype = type_names.get(t.Type(), str(t.Type()))
            if dtype not in _NUMPY:
                continue
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            values = np.frombuffer(raw, dtype=_NUMPY[dtype])
            if values.size < min_elements or values.size != int(np.prod(shape)):
                continue
            seen.add(t.Buffer())
            q = t.Quantization()
            scales = zero_points = None
            axis = 0
            if q is not None and q.ScaleLength():
                scales, zero_points, axis = q.ScaleAsNumpy(), np.asarray(q.ZeroPointAsNumpy()), q.QuantizedDimension()
            out.append(WeightTensor(t.Name().decode(), dtype, shape, values.reshape(shape), scales, zero_points, axis))
    return out
