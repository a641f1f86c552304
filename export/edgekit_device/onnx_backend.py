"""ONNX Runtime backend: one InferenceSession per graph, on the CPU."""

from __future__ import annotations

from pathlib import Path

from .backend import Backend, import_engine
from .errors import BundleError


class OnnxBackend(Backend):
    format = "onnx"

    def load(self, bundle_dir, manifest: dict) -> None:
        ort = import_engine("onnx", "onnxruntime")

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Phones and shared CPUs: idle threads sleep instead of spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions, self.outputs = {}, {}
        for name, graph in manifest["graphs"].items():
            path = Path(bundle_dir) / graph["file"]
            try:
                self.sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types
                raise BundleError(f"onnxruntime cannot load '{graph['file']}' ({str(e).splitlines()[0][:200]}); "
                                  "export the bundle again.") from None
            self.outputs[name] = [t["name"] for t in graph["outputs"]]

    def run(self, name: str, feeds: dict) -> dict:
        values = self.sessions[name].run(self.outputs[name], feeds)
        return dict(zip(self.outputs[name], values))
