"""``edgekit tune``: adapt a frozen (or not) base encoder to a task with M6-Rec's option tuning
(section 3.4, Appendix A.2, Table 8) or a baseline, and serve many tasks on one base.

The entry point is ``tune(cfg, out)`` (``edgekit.tune.stage``); its recipe is ``TuneConfig``
(``edgekit.tune.config``). Methods: ``finetune``, ``lora`` (Hugging Face PEFT), ``prompt``,
``option``, ``option-adapter`` (``edgekit.tune.model``). The paper's math: ``options.py`` (soft
options as the classifier, the prompt count) and ``adapter.py`` (the gated FFN adapter). A run
writes a task file (``taskfile.py``); ``TaskBank`` (``bank.py``) serves many on one base, in
batches that mix tasks.

Python API::

    from edgekit.tune import TaskBank, load_tune_config, tune
    cfg = load_tune_config(None, {"model": "e5-small", "task": {"name": "tnews", "data_dir": "data/tnews"},
                                  "tune": {"method": "option-adapter"}})
    result = tune(cfg, out="runs/tune-tnews")
    bank = TaskBank("e5-small", [result["task_file"]])
    bank.predict([("tnews", "上海的房价又涨了")])
"""

from edgekit.tune.bank import TaskBank, evaluate_tasks
from edgekit.tune.config import TuneConfig, load_tune_config
from edgekit.tune.model import METHODS, Base, TuneModule, TuneSpec
from edgekit.tune.stage import tune
from edgekit.tune.taskfile import base_fingerprint, load_tuned, read_task_meta

__all__ = [
    "METHODS",
    "Base",
    "TaskBank",
    "TuneConfig",
    "TuneModule",
    "TuneSpec",
    "base_fingerprint",
    "evaluate_tasks",
    "load_tune_config",
    "load_tuned",
    "read_task_meta",
    "tune",
]
