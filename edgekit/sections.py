"""Config sections more than one stage reads, and the names of every stage's recipe sections.

A section read by one stage lives in that stage's ``config.py``; one read by several (the teacher
and the corpus, read by distill and prune) lives here so no stage imports another stage's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Top-level sections of the stage recipes. A flat recipe may hold several stages' sections (as the
# first combined recipes did); each stage command skips the ones it does not read, and any other
# unknown key stays an error. A new stage adds its section names here.
STAGE_SECTIONS = ("teacher", "student", "vocab", "distill", "prune", "early_exit", "finetune", "quantize", "export",
                  "eval", "tasks", "pipeline", "compare", "tune", "late_interaction")


@dataclass
class TeacherSection:
    path: str | None = None        # a checkpoint directory, or the built-in name "e5-small"
    layer: int = -1                # 1-based teacher layer to distill from; -1 = last


@dataclass
class DataSection:
    corpus: list[str] = field(default_factory=list)
    text_field: str = "text"
    max_length: int = 128
    max_lines: int | None = None


@dataclass
class DistillSection:
    method: str = "minilmv2"              # minilmv2 (Q-Q, K-K, V-V relations) or minilmv1
    relation_heads: int | None = None     # default: a head count that divides both hidden sizes
    student_layer: int = -1


@dataclass
class LateInteractionSection:
    """Multi-segment late interaction (``edgekit.late_interaction``), read by finetune and served models."""

    late_layers: int | None = None     # L - L', the layers that run per request; None: off (the paper: 1 to 3)
    max_segments: int = 16             # segments per example (the segment embedding's rows); extras join the last
    max_segment_tokens: int = 64       # tokens per segment, [CLS] and [SEP] included; longer text is truncated


@dataclass
class TaskSection:
    """The task a model is trained or evaluated on (read by finetune, tune and eval)."""

    name: str = "tnews"
    data_dir: str | None = None
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    test_file: str | None = None       # a labelled test split (file stem or path); sentiment has one built in
    provenance: str | None = None      # a file describing the data (default: PROVENANCE.md in data_dir)
    max_length: int | None = None      # None: the task's CLUE-baseline length (128; CSL 256: finetune/schedule.py)
    max_train_examples: int | None = None
    max_eval_examples: int | None = None

    def __post_init__(self):
        if self.max_length is None:  # resolved here so every reader (export, eval, tune) sees a number
            from edgekit.finetune.schedule import task_max_length

            self.max_length = task_max_length(self.name)
