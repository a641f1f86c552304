"""The pipeline recipe: a ``pipeline:`` section, one section per stage, and how a task's fine-tune recipe is made.

Each stage's section holds exactly what that stage's own command reads (``distill:`` is an
``edgekit distill`` recipe, ``prune:`` an ``edgekit prune`` recipe, ``finetune:`` an
``edgekit finetune`` recipe without model and task); only ``pipeline:``, ``export:`` and ``eval:``
are typed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgekit.config import from_dict, load_config, merge, read_recipe, to_dict
from edgekit.errors import UserError

REFERENCES = ("teacher", "dense", "baseline")


@dataclass
class TaskEntry:
    """One task of the pipeline; unset fields fall back to the ``finetune:`` section."""
    name: str = "sentiment"
    data_dir: str | None = None
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    test_file: str | None = None       # a labelled test split: the eval rows report it instead of dev
    provenance: str | None = None      # a file describing the data (default: PROVENANCE.md in data_dir)
    max_length: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    max_steps: int | None = None
    teacher_max_steps: int | None = None   # the teacher row's steps (default: max_steps)
    eval_every: int | None = None
    # a finished `edgekit finetune` run of pipeline.teacher on this task: the teacher row adopts it
    # (a symlink, no copy) instead of fine-tuning the teacher again (pipeline/adopt.py)
    teacher_run: str | None = None
    # the student rows of this task as late-interaction models (M6-Rec 3.3): the first layers encode each
    # segment alone (edgekit/tasks.py segmenters: CSL = each keyword + the abstract), the last
    # ``late_layers`` run over all of them. The teacher row stays a whole-text model.
    late_layers: int | None = None


@dataclass
class PipelineSection:
    teacher: str | None = "e5-small"   # a checkpoint directory or a built-in teacher name
    out: str | None = None             # default run directory (the CLI's --out wins)
    tasks: list[TaskEntry] = field(default_factory=lambda: [TaskEntry()])
    data_dir: str | None = None        # parent of per-task data directories (DATA_DIR/<task>)
    prune: bool = True                 # False: ship the dense distilled student
    references: list[Literal["teacher", "dense", "baseline"]] = field(default_factory=list)


@dataclass
class ExportSection:
    format: Literal["onnx", "tflite"] = "onnx"
    int8: Literal["none", "dynamic", "static"] = "dynamic"
    exit_layer: int | None = None      # None: the per-layer bundle serving every exit
    max_length: int | None = None      # default: the task's max_length
    pack: bool = True
    pack_codec: Literal["xz", "zlib"] = "zlib"   # zlib: what the phone app and the browser decode; xz: Python only
    # The bundle for the phone app (android_demo runs TFLite through LiteRT): the same model, int8
    # scheme, exits and length as the bundle above, as TFLite with a zlib .edgepack, written to
    # OUT/phone/<task> (or the bundle above itself when format is tflite). none: no phone bundle.
    phone: Literal["tflite", "none"] = "tflite"
    calibration_examples: int = 256    # train texts used for static int8 ranges
    parity_examples: int = 256         # dev texts the export's parity check runs (the gate counts changed predictions)
    min_agreement: float | None = None # share of those texts on which every exit must predict PyTorch's class
                                       # (default: 0.999 fp32, 0.98 int8; export/parity.py says why)
    embedding_bits: int = 8            # int8 only: 2..7 snaps each word-embedding row to 2^bits-1 levels
                                       # (quantize/table_bits.py: a smaller download); 8 leaves the table
    # int8 only: one int8 scale for the word-embedding table, or one per row (TFLite only: 85 KB
    # more download on the paper shape for half the table's error; export/tflite.py)
    embedding_scale: Literal["table", "row"] = "table"
    # dynamic int8 ONNX only: Neural Compressor keeps modules in float, head first, until every exit agrees
    # with the float model on this share of the parity texts (`edgekit export --accuracy-aware`); the
    # phone's TFLite bundle is quantized as before
    accuracy_aware: float | None = None


@dataclass
class EvalSection:
    batch_size: int = 32
    max_examples: int | None = None    # default: the whole split evaluated (test if the task has one, else dev;
                                       # finetune's max_eval_examples only limits the dev evaluations that
                                       # pick the best checkpoint)
    threads: int | None = None


@dataclass
class PipelineConfig:
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    distill: dict = field(default_factory=dict)            # an `edgekit distill` recipe
    prune: dict = field(default_factory=dict)              # an `edgekit prune` recipe (model is filled in)
    finetune: dict = field(default_factory=dict)           # an `edgekit finetune` recipe (model, task filled in)
    teacher_finetune: dict = field(default_factory=dict)   # merged over finetune: for the teacher reference
    export: ExportSection = field(default_factory=ExportSection)
    eval: EvalSection = field(default_factory=EvalSection)


def _normalise(data: dict) -> dict:
    """Task entries may be written as bare names: ``tasks: [tnews, csl]``."""
    p = data.get("pipeline")
    if isinstance(p, dict) and isinstance(p.get("tasks"), (list, str)):
        tasks = p["tasks"].split(",") if isinstance(p["tasks"], str) else p["tasks"]
        p = {**p, "tasks": [{"name": t} if isinstance(t, str) else t for t in tasks]}
        data = {**data, "pipeline": p}
    return data


def _select_recipe_tasks(data: dict, overrides: dict) -> dict:
    """``--set pipeline.tasks=csl``: a bare name in the override names the recipe's entry of that task, with
    its keys (``late_layers``, ``provenance``, ``teacher_run``...), not a new entry with defaults; a name
    the recipe does not list becomes ``{name: ...}`` as in a recipe."""
    p = overrides.get("pipeline")
    if not (isinstance(p, dict) and isinstance(p.get("tasks"), (list, str))):
        return overrides
    written = _normalise(data).get("pipeline", {})
    entries = {e.get("name"): e for e in (written.get("tasks") or []) if isinstance(e, dict)} \
        if isinstance(written, dict) else {}
    tasks = p["tasks"].split(",") if isinstance(p["tasks"], str) else p["tasks"]
    chosen = [entries.get(t.strip(), {"name": t.strip()}) if isinstance(t, str) else t for t in tasks]
    return {**overrides, "pipeline": {**p, "tasks": chosen}}


def load_pipeline_config(recipe=None, overrides: dict | None = None) -> PipelineConfig:
    data = read_recipe(recipe) if recipe else {}
    if recipe and "pipeline" not in data:
        raise UserError(f"recipe '{recipe}' has no pipeline: section; `edgekit run` needs a pipeline recipe such as "
                        "recipes/quickstart.yaml (stage recipes run with their own command, e.g. edgekit distill).")
    cfg = from_dict(PipelineConfig, _normalise(merge(data, _select_recipe_tasks(data, overrides or {}))))
    if not cfg.pipeline.tasks:
        raise UserError("pipeline.tasks is empty; name at least one task, e.g. tasks: [sentiment].")
    names = [t.name for t in cfg.pipeline.tasks]
    if len(set(names)) != len(names):
        raise UserError(f"pipeline.tasks names a task twice ({', '.join(names)}); list each task once.")
    for t in cfg.pipeline.tasks:  # checked now, not when the task's first fine-tuning builds the model
        if t.late_layers is None:
            continue
        from edgekit.student import StudentConfig

        depth = (cfg.distill.get("student") or {}).get("num_layers") or StudentConfig().num_layers
        if isinstance(t.late_layers, bool) or not isinstance(t.late_layers, int) or not 1 <= t.late_layers < depth:
            raise UserError(f"pipeline.tasks: {t.name}'s late_layers must be an integer from 1 to {depth - 1} (the "
                            f"student has {depth} layers and at least one must encode segments alone), "
                            f"got {t.late_layers!r}.")
    adopting = [t.name for t in cfg.pipeline.tasks if t.teacher_run]
    if adopting and "teacher" not in cfg.pipeline.references:
        raise UserError(f"pipeline task {adopting[0]} has a teacher_run but pipeline.references has no teacher row "
                        "to adopt it into; add teacher to pipeline.references, or drop teacher_run.")
    # Checked here, not at export: a bad gate setting should not surface after hours of training.
    if cfg.export.min_agreement is not None and not 0.0 <= cfg.export.min_agreement <= 1.0:
        raise UserError(f"export.min_agreement must be between 0 and 1, got {cfg.export.min_agreement!r}.")
    if cfg.export.phone == "tflite" and cfg.export.format == "tflite" and cfg.export.pack \
            and cfg.export.pack_codec != "zlib":
        raise UserError("export.phone: tflite makes the tflite bundle the phone app's, and the app decodes zlib packs, "
                        f"not {cfg.export.pack_codec}; set export.pack_codec: zlib (or export.phone: none).")
    if cfg.export.embedding_bits != 8:
        from edgekit.quantize.table_bits import check_bits

        try:
            check_bits(cfg.export.embedding_bits)
        except UserError:
            raise UserError(f"export.embedding_bits must be an integer from 2 to 8 (8 leaves the table as int8 "
                            f"export stores it), got {cfg.export.embedding_bits!r}.") from None
        if cfg.export.int8 == "none":
            raise UserError("export.embedding_bits applies to int8 bundles; set export.int8: dynamic (or static), "
                            "or export.embedding_bits: 8.")
    if cfg.export.embedding_scale == "row":
        if cfg.export.format == "onnx":
            raise UserError("export.embedding_scale: row needs TFLite (onnxruntime's int8 Gather has one scale per "
                            "table); set export.format: tflite or export.embedding_scale: table.")
        if cfg.export.int8 == "none":
            raise UserError("export.embedding_scale: row applies to int8 bundles; set export.int8: dynamic (or "
                            "static), or export.embedding_scale: table.")
    aa = cfg.export.accuracy_aware
    if aa is not None:
        if isinstance(aa, bool) or not isinstance(aa, (int, float)) or not 0.0 < aa <= 1.0:
            raise UserError(f"export.accuracy_aware must be a share between 0 and 1 (e.g. 0.99), got {aa!r}.")
        if cfg.export.format != "onnx" or cfg.export.int8 != "dynamic":
            raise UserError("export.accuracy_aware applies to dynamic int8 ONNX bundles; set export.format: onnx and "
                            "export.int8: dynamic, or drop export.accuracy_aware.")
    if cfg.export.parity_examples < 1:
        raise UserError(f"export.parity_examples must be at least 1, got {cfg.export.parity_examples!r}.")
    return cfg


def task_config(cfg: PipelineConfig, entry: TaskEntry, model: str, reference: str | None = None):
    """The FinetuneConfig of one task, validated (raises before anything runs)."""
    from edgekit.finetune import FinetuneConfig

    base = dict(cfg.finetune)
    if reference == "teacher":
        base = merge(base, cfg.teacher_finetune)
    task = {k: v for k, v in to_dict(entry).items()
            if k not in ("max_steps", "teacher_max_steps", "eval_every", "teacher_run", "late_layers") and v is not None}
    if "data_dir" not in task and cfg.pipeline.data_dir:
        task["data_dir"] = str(Path(cfg.pipeline.data_dir) / entry.name)
    over = {"model": model, "task": task}
    steps = entry.teacher_max_steps if reference == "teacher" and entry.teacher_max_steps else entry.max_steps
    if steps is not None:
        over["train"] = {"max_steps": steps}
    if entry.eval_every is not None:
        over["finetune"] = {"eval_every": entry.eval_every}
    if entry.late_layers is not None and reference != "teacher":
        over["late_interaction"] = {"late_layers": entry.late_layers}
    return load_config(FinetuneConfig, None, merge(base, over))
