"""Weighted early exit for the ALBERT student (M6-Rec section 3.5).

Every layer is an exit: exiting at layer k means the output head reads layer k's output instead
of the last layer's, and the same head serves every exit. Training optimizes the PABEE-weighted
sum of the per-exit losses (``exit_weights``, ``weighted_exit_loss``); inference either spends a
fixed budget of k layers (``predict``) or decides per example when to stop (``predict_dynamic``:
PABEE's patience or DeeBERT's entropy threshold).

Layers above the exit are never computed: ``encode_to_layer`` replays what
``AlbertModel.forward`` does (embeddings, projection to the hidden size, the padding mask that
transformers prepares for the model's attention implementation) and applies the shared layer only
k times. Because ALBERT shares one layer's weights across all depths, a model trained this way is
still a standard ``AlbertForSequenceClassification`` checkpoint.

Where things are: ``losses`` (the paper's math: exit weights, the weighted loss, prediction
entropy), ``classifier`` (``EarlyExitClassifier``, ``encode_to_layer``), ``predict``
(``predict_texts``, behind ``edgekit predict``). The model pieces they run are ``edgekit.albert``.
"""

from edgekit.early_exit.classifier import EarlyExitClassifier, EarlyExitOutput, encode_to_layer
from edgekit.early_exit.losses import exit_weights, prediction_entropy, weighted_exit_loss
from edgekit.early_exit.predict import predict_texts

__all__ = [
    "EarlyExitClassifier",
    "EarlyExitOutput",
    "encode_to_layer",
    "exit_weights",
    "predict_texts",
    "prediction_entropy",
    "weighted_exit_loss",
]
