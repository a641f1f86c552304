"""The peer of benchmarks/export_latency.py: Hugging Face Optimum's ONNX export + ORT int8 of the same student.

    PEER/bin/python benchmarks/optimum_peer.py MODEL_DIR WORK_DIR INPUTS.npz RUNS

Optimum's ONNX exporter (optimum-onnx 0.1.0, the newest release) needs transformers < 4.58 and
imports transformers 4 APIs that 5.x removed (``transformers.utils.is_offline_mode``,
``modeling_utils.get_parameter_dtype``), so it cannot live in edgekit's environment
(transformers 5.23). export_latency.py runs this script with the interpreter of a separate
virtualenv (``--peer-python``), made with:

    python -m venv PEER && PEER/bin/pip install torch==2.13.0 "optimum-onnx[onnxruntime]==0.1.0" "transformers<4.58"

It exports MODEL_DIR (a standard AlbertForSequenceClassification checkpoint) with
``optimum.exporters.onnx.main_export``, quantizes it with ``ORTQuantizer`` and
``AutoQuantizationConfig.avx512_vnni(is_static=False)`` (dynamic int8, the same kind as edgekit's
ONNX int8), times both with onnxruntime on one thread on the inputs in INPUTS.npz
(``ids_<T>`` / ``mask_<T>``), and prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time(session, feeds: dict, runs: int) -> float:
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    for _ in range(2):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(model_dir: str, work: str, inputs: str, runs: int) -> dict:
    import optimum
    import transformers
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
    files = {"fp32": work / "fp32" / "model.onnx", "int8": next((work / "int8").glob("*.onnx"))}
    data = np.load(inputs)
    lengths = sorted(int(k.split("_")[1]) for k in data.files if k.startswith("ids_"))
    out = {"versions": {"optimum": optimum.__version__ if hasattr(optimum, "__version__") else "2.x",
                        "transformers": transformers.__version__},
           "export_seconds": round(export_s, 1), "bytes": {k: f.stat().st_size for k, f in files.items()},
           "latency_ms": {}, "logits": {}}
    for precision, file in files.items():
        session = _session(file)
        for length in lengths:
            ids, mask = data[f"ids_{length}"], data[f"mask_{length}"]
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            out["latency_ms"][f"{precision}@{length}"] = _time(session, feeds, runs)
            names = {i.name for i in session.get_inputs()}
            out["logits"][f"{precision}@{length}"] = session.run(None, {k: v for k, v in feeds.items() if k in names})[0].tolist()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
