"""The ``edgekit distill`` recipe: teacher, student, vocab, data, distill and train sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgekit.config import load_config
from edgekit.sections import STAGE_SECTIONS, DataSection, DistillSection, TeacherSection
from edgekit.student import StudentConfig
from edgekit.train import TrainConfig


@dataclass
class VocabSection:
    trim: Literal["auto", "true", "false"] = "auto"   # auto: trim teachers with more than 50k pieces
    min_count: int = 1


@dataclass
class DistillConfig:
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentConfig = field(default_factory=StudentConfig)
    vocab: VocabSection = field(default_factory=VocabSection)
    data: DataSection = field(default_factory=DataSection)
    distill: DistillSection = field(default_factory=DistillSection)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_distill_config(recipe=None, overrides: dict | None = None) -> DistillConfig:
    return load_config(DistillConfig, recipe, overrides, ignore_sections=STAGE_SECTIONS, stage="distill")
