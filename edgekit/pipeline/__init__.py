"""``edgekit run``: the whole M6-Edge pipeline from one recipe, resumable stage by stage.

teacher (built-in name or directory) → distill → prune with early exit → fine-tune per task →
int8 export (quantize + bundle) → eval of the exported bundles → compare → report.

A pipeline recipe has a ``pipeline:`` section and one section per stage holding exactly what that
stage's own command reads (``distill:`` is an ``edgekit distill`` recipe, ``prune:`` an
``edgekit prune`` recipe, ``finetune:`` an ``edgekit finetune`` recipe without model and task), so
``edgekit distill --recipe PIPELINE.yaml`` runs the distill stage alone. Optional reference rows
for the comparison (``pipeline.references``): the teacher fine-tuned per task (upper reference),
the dense distilled student, and an ALBERT student of the same shape fine-tuned without
distillation (what distillation buys).

Every stage writes into its own directory under the run directory and marks it finished with
``stage.json`` (a fingerprint of the stage's config and of the stages it reads). Re-running the
same command skips finished stages and resumes an interrupted one from its last checkpoint; a
stage whose recipe or inputs changed is refused unless ``--force`` asks to redo it.

Modules: ``config`` (the recipe schema), ``plan`` (which stages, their directories, fingerprints,
done/resume/redo), ``runner`` (``run_pipeline``: runs the plan through each stage's entry point),
``report`` (``report.md`` and ``report.json``).

Python API::

    from edgekit.pipeline import load_pipeline_config, run_pipeline
    report = run_pipeline(load_pipeline_config("recipes/quickstart.yaml"), "runs/quickstart")
"""

from edgekit.pipeline.config import PipelineConfig, TaskEntry, load_pipeline_config
from edgekit.pipeline.runner import run_pipeline

__all__ = ["PipelineConfig", "TaskEntry", "load_pipeline_config", "run_pipeline"]
