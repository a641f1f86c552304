"""The TFLite backend of the device runtime: one .tflite graph under ai-edge-litert's Interpreter.

An engine in the sense of ``backend.PerGraphBackend``: ``TFLiteBackend(path, num_threads=n)``
loads one graph file and ``run(feeds)`` runs it; the runtime makes one per graph of the manifest.

No torch here: this is what a phone app does with LiteRT, written in numpy. A graph is run
through its signature (``serving_default``), by input and output name, with float32 / int32
arrays in and out. Graphs quantized to full int8 take and give int8 tensors; the backend
quantizes inputs and dequantizes outputs with each tensor's own scale and zero point, so callers
never see the difference. Shapes are static: a feed must have exactly the graph's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .backend import import_engine
from .errors import BundleError

__all__ = ["TFLiteBackend"]

SIGNATURE = "serving_default"


class TFLiteBackend:
    """Run one exported graph. ``inputs`` / ``outputs``: name -> {"shape", "dtype"} (what callers feed and get)."""

    format = "tflite"

    def __init__(self, path, num_threads: int = 1):
        Interpreter = import_engine("tflite", "ai_edge_litert.interpreter").Interpreter  # the optional extra

        self.path = Path(path)
        if not self.path.is_file():
            raise BundleError(f"the bundle has no '{self.path.name}'; export the bundle again.")
        try:
            self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
        except (ValueError, RuntimeError) as e:  # what ai-edge-litert raises for a file it cannot read
            raise BundleError(f"ai-edge-litert cannot load '{self.path.name}' ({str(e).splitlines()[0][:200]}); "
                              "export the bundle again.") from None
        signatures = self._interpreter.get_signature_list()
        key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
        self._runner = self._interpreter.get_signature_runner(key)
        self._in = self._runner.get_input_details()
        self._out = self._runner.get_output_details()
        self.inputs = {name: _public(d) for name, d in self._in.items()}
        self.outputs = {name: _public(d) for name, d in self._out.items()}

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for ``feeds`` (every input by name, in the graph's shape)."""
        missing = set(self._in) - set(feeds)
        if missing:
            raise ValueError(f"{self.path.name} needs inputs {sorted(missing)}; got {sorted(feeds)}")
        prepared = {}
        for name, detail in self._in.items():
            value = np.asarray(feeds[name])
            if tuple(value.shape) != tuple(detail["shape"]):
                raise ValueError(f"input {name!r} of {self.path.name} has the static shape "
                                 f"{tuple(int(x) for x in detail['shape'])}, got {tuple(value.shape)}; "
                                 "pad or truncate to the bundle's max_length")
            prepared[name] = _to_stored(value, detail)
        raw = self._runner(**prepared)
        return {name: _from_stored(value, self._out[name]) for name, value in raw.items()}

    __call__ = run


def _quantized(detail) -> bool:
    scale, _ = detail["quantization"]
    return bool(scale) and np.issubdtype(detail["dtype"], np.integer) and detail["dtype"] not in (np.int32, np.int64)


def _public(detail) -> dict:
    dtype = np.float32 if _quantized(detail) else detail["dtype"]
    return {"shape": tuple(int(x) for x in detail["shape"]), "dtype": np.dtype(dtype).name}


def _to_stored(value: np.ndarray, detail) -> np.ndarray:
    if _quantized(detail):
        scale, zero_point = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        value = np.clip(np.round(value.astype(np.float32) / scale) + zero_point, info.min, info.max)
    return value.astype(detail["dtype"], copy=False)


def _from_stored(value: np.ndarray, detail) -> np.ndarray:
    if _quantized(detail):
        scale, zero_point = detail["quantization"]
        return (value.astype(np.float32) - zero_point) * np.float32(scale)
    return value
