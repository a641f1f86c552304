"""``edgekit distill``: MiniLM task-agnostic relation distillation of a teacher into an ALBERT student.

The entry point is ``distill(cfg, out)`` (``edgekit.distill.stage``); its recipe is
``DistillConfig`` (``edgekit.distill.config``); the relation losses are in ``losses`` and
``minilm``, the teacher adapters in ``adapters``.

Python API::

    from edgekit.distill import load_distill_config, distill
    cfg = load_distill_config("recipes/quickstart.yaml", {"train": {"max_steps": 100}})
    result = distill(cfg, out="runs/quickstart")
"""

from edgekit.distill.config import DistillConfig, load_distill_config
from edgekit.distill.stage import distill

__all__ = ["DistillConfig", "distill", "load_distill_config"]
