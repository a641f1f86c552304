"""Export for phones and browsers (M6-Rec section 3.5): a classifier checkpoint -> a bundle directory.

``export_model`` (``stage.py``) is the stage's entry point (``edgekit export``). A bundle holds the model graphs
(ONNX or TFLite, float32 or int8, one ``fixed`` exit or ``per-layer`` graphs serving every exit),
``device_tokenizer.json``, ``labels.json`` and ``manifest.json``; ``export/BUNDLE.md`` specifies
it and ``edgekit_device`` (torch-free) runs it. Every export is checked before it is kept: the
device tokenizer must give the checkpoint tokenizer's ids, and the bundle, run through
``edgekit_device``, must reproduce the PyTorch logits at every exit it offers (``parity.py``).
The directory is written atomically: a failed check leaves nothing behind.

Where things are: ``stage`` (``export_model``: arguments, dispatch, manifest, parity), ``graphs``
(the model's graphs, described once for every format), one module per backend that writes and
quantizes its format (``onnx``, ``tflite``), ``parity`` (the checks), ``bundle`` (the manifest and
device files), ``device_tokenizer`` (the tokenizer the device runs).
"""

from edgekit.export.stage import FORMATS, PACK_SUFFIX, export_model, load_classifier, packed_path

__all__ = ["FORMATS", "PACK_SUFFIX", "export_model", "load_classifier", "packed_path"]
