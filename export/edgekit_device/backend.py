"""The interface between the runtime and an inference engine (ONNX Runtime, LiteRT).

A backend runs a bundle's graphs by name; the runtime does everything else (tokenizing, padding
to static shapes, looping the shared layer, deciding exits). To add an engine, subclass
``Backend`` in ``edgekit_device/<format>_backend.py`` and list it in ``BACKENDS``; engines are
imported only when a bundle of their format is loaded, so the runtime needs only the engine the
bundle uses.

Contract (what ``Predictor`` relies on):

- ``load(bundle_dir, manifest)`` is called once; ``manifest["graphs"]`` names the graphs
  (``model`` for a fixed bundle; ``embed``, ``layer``, ``head`` for a per-layer bundle), their
  files and their input and output tensors (name, dtype, shape, axes).
- ``run(name, feeds)`` takes ``{input name: numpy array}`` with exactly the dtypes and, where the
  manifest gives an integer dimension, exactly the shapes the manifest declares (the runtime pads
  and splits batches to fit), and returns ``{output name: numpy array}`` for every output.
- Neither method may import torch.
"""

from __future__ import annotations

import importlib

from .errors import BundleError

BACKENDS = {
    "onnx": ("edgekit_device.onnx_backend", "OnnxBackend", "onnxruntime"),
    "tflite": ("edgekit_device.tflite_backend", "TFLiteBackend", "ai-edge-litert"),
}
# onnxruntime is a dependency of edgekit-device, ai-edge-litert its `tflite` extra.
INSTALL = {
    "onnx": "reinstall the runtime with `pip install edgekit-device` (`pip install ./export` from a checkout)",
    "tflite": "install the runtime's tflite extra with `pip install 'edgekit-device[tflite]'` "
              "(`pip install './export[tflite]'` from a checkout)",
}


class Backend:
    """Runs the graphs of one bundle. Subclasses implement ``load`` and ``run``."""

    format = ""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def load(self, bundle_dir, manifest: dict) -> None:
        raise NotImplementedError

    def run(self, name: str, feeds: dict) -> dict:
        raise NotImplementedError


class PerGraphBackend(Backend):
    """Adapts an engine class that runs one graph file, ``Engine(path, num_threads=n).run(feeds)``,
    to the bundle-level interface (one engine per graph of the manifest)."""

    def __init__(self, engine, threads: int | None = None):
        super().__init__(threads)
        self.engine = engine

    def load(self, bundle_dir, manifest: dict) -> None:
        from pathlib import Path

        self.graphs = {name: self.engine(Path(bundle_dir) / graph["file"], num_threads=self.threads or 1)
                       for name, graph in manifest["graphs"].items()}

    def run(self, name: str, feeds: dict) -> dict:
        return self.graphs[name].run(feeds)


def get_backend(fmt: str, threads: int | None = None) -> Backend:
    """A new backend for bundles of format ``fmt``."""
    if fmt not in BACKENDS:
        raise BundleError(f"no backend for bundle format {fmt!r}; known formats: {', '.join(BACKENDS)}.")
    module_name, class_name, _ = BACKENDS[fmt]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise BundleError(f"this edgekit_device has no {fmt} backend ({module_name} is missing).") from None
        raise missing_engine(fmt, e.name) from None
    engine = getattr(module, class_name)
    if isinstance(engine, type) and issubclass(engine, Backend):
        return engine(threads=threads)
    return PerGraphBackend(engine, threads=threads)  # an engine that runs one graph file


def import_engine(fmt: str, module_name: str):
    """The engine module ``module_name`` (e.g. ``onnxruntime``), imported only when a ``fmt`` bundle
    is loaded, so that edgekit-device installs and imports without the engines it does not use."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise missing_engine(fmt, e.name) from None


def missing_engine(fmt: str, missing: str | None) -> BundleError:
    """The error for a ``fmt`` bundle whose engine is not installed: one sentence with the install command."""
    module = (missing or BACKENDS[fmt][2]).split(".")[0]  # the package, not the submodule that was asked for
    return BundleError(f"running a {fmt} bundle needs the '{BACKENDS[fmt][2]}' package, but {module} is not "
                       f"installed; {INSTALL[fmt]}.")
