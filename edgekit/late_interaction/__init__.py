"""Multi-segment late interaction (M6-Rec section 3.3): train one pass, serve the halves separately.

The model is ``LateInteractionClassifier`` (``model.py``); the mask and position math is in
``segments.py`` (formulas shared with the torch-free ``edgekit_device.segments``); the serving
interface ``SegmentModel`` and ``load_segment_model`` (checkpoint: PyTorch; bundle: no torch) are
in ``serving.py``. Training is ``edgekit finetune --late-interaction`` (the ``late_interaction``
recipe section, ``edgekit.sections.LateInteractionSection``); packed batches are ``data.py``; the bundle, ``export.py``.

Python API::

    from edgekit.late_interaction import load_segment_model
    m = load_segment_model("runs/finetune/model")          # or an exported bundle directory
    cached = m.encode_segments(["男性", "点击了 X", "点击了 Y"])
    logits = m.interact([cached, [cached[0], cached[2]]])   # (2, n_labels)
"""

from edgekit.late_interaction.model import LateInteractionClassifier, SegmentInputError
from edgekit.late_interaction.serving import TorchSegmentModel, checkpoint_hash, load_segment_model
from edgekit_device.segments import SegmentError, SegmentModel

__all__ = ["LateInteractionClassifier", "SegmentError", "SegmentInputError", "SegmentModel", "TorchSegmentModel",
           "checkpoint_hash", "load_segment_model"]
