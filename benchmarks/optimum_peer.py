"""The peer of benchmarks/export_latency.py: Hugging Face Optimum's ONNX export + ORT int8 of the same student.

    PEER/bin/python benchmarks/optimum_peer.py MODEL_DIR WORK_DIR

Optimum's ONNX exporter (optimum-onnx 0.1.0, the newest release) needs transformers < 4.58 and
imports transformers 4 APIs that 5.x removed (``transformers.utils.is_offline_mode``,
``modeling_utils.get_parameter_dtype``), so it cannot live in edgekit's environment
(transformers 5.23). export_latency.py runs this script with the interpreter of a separate
virtualenv (``--peer-python``), made with:

    python -m venv PEER && PEER/bin/pip install torch==2.13.0 "optimum-onnx[onnxruntime]==0.1.0" "transformers<4.58"

It exports MODEL_DIR (a standard AlbertForSequenceClassification checkpoint) with
``optimum.exporters.onnx.main_export``, quantizes it with ``ORTQuantizer`` and
``AutoQuantizationConfig.avx512_vnni(is_static=False)`` (dynamic int8, the same kind as edgekit's
ONNX int8) and prints one JSON object with the two files; export_latency.py times them with its
own onnxruntime (the same version), interleaved with every other runtime.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import time
from pathlib import Path


def main(model_dir: str, work: str) -> dict:
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    work = Path(work)
    start = time.perf_counter()
    main_export(model_dir, output=work / "fp32", task="text-classification", opset=17, do_validation=False)
    export_s = time.perf_counter() - start
    quantizer = ORTQuantizer.from_pretrained(work / "fp32")
    quantizer.quantize(save_dir=work / "int8",
                       quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False))
    return {"versions": {name: md.version(name) for name in ("optimum", "optimum-onnx", "transformers", "onnxruntime")},
            "export_seconds": round(export_s, 1),
            "files": {"fp32": str(work / "fp32" / "model.onnx"), "int8": str(next((work / "int8").glob("*.onnx")))}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
