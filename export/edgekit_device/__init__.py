"""edgekit_device: the torch-free reference runtime for edgekit bundles (see export/BUNDLE.md).

Imports only numpy, json, hashlib and the inference engine the bundle needs (onnxruntime, or
ai_edge_litert for TFLite bundles). It is the executable specification the phone app and the
browser demo follow::

    from edgekit_device import Predictor, unpack
    unpack("model.edgepack", "bundle")            # a packed download -> the bundle directory
    p = Predictor("bundle")
    p.predict(["这家店的菜很好吃"], mode="patience")  # labels, scores, exit layers
"""

from .backend import Backend, get_backend
from .bundle import FORMAT_VERSION, Bundle, load_bundle, validate_manifest
from .errors import BundleError
from .pack import pack, register_segment_finder, unpack
from .runtime import Prediction, Predictor
from .tokenizer import Tokenizer

__all__ = ["Backend", "Bundle", "BundleError", "FORMAT_VERSION", "Prediction", "Predictor", "Tokenizer",
           "get_backend", "load_bundle", "pack", "register_segment_finder", "unpack", "validate_manifest"]
