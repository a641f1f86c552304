"""``edgekit eval`` and ``edgekit compare``: accuracy of what ships, and the table that compares models.

``evaluate(path, task, ...)`` measures a fine-tuned checkpoint or an exported bundle (the bundle through
the torch-free device runtime, as the phone runs it), overall and per exit layer;
``compare(results, out)`` turns those results into a Table-7-style comparison (M6-Rec section 4.5).
"""

from edgekit.eval.compare import compare, model_size
from edgekit.eval.evaluate import evaluate, is_bundle

__all__ = ["compare", "evaluate", "is_bundle", "model_size"]
