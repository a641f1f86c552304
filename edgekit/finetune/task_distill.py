"""Task-level distillation: the student learns a fine-tuned teacher's soft labels (Hinton et al. 2015;
what TinyBERT's task stage and PP-MiniLM do after general distillation).

For one exit's logits z_s, the teacher's logits z_t, labels y and temperature T::

    L = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(y, z_s)

T² keeps the soft term's gradients on the scale of the hard term's as T grows. KL is averaged over
every example of the batch; CE over the labelled ones only (unlabelled in-domain text carries label
``IGNORE`` = −100 and learns from the teacher alone), and is 0 for a batch without labels. An
early-exit student sums L over its exits with the weights 2k/(L(L+1)) (``weighted_exit_loss``):
every exit learns from the teacher's last layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekit.errors import UserError

IGNORE = -100


def check_distill_settings(alpha: float, temperature: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"finetune.alpha must be between 0 (labels only) and 1 (soft labels only), got {alpha}.")
    if not temperature > 0:
        raise UserError(f"finetune.temperature must be positive, got {temperature}.")


def soft_label_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-example KL(softmax(z_t/T) ‖ softmax(z_s/T)) = Σ_c p_t,c (log p_t,c − log p_s,c), shape (B,).

    Teacher [0, 0], student [log 3, 0], T = 1: p_t = (½, ½), p_s = (¾, ¼);
    KL = ½ log(½/¾) + ½ log(½/¼) = ½ log(4/3) ≈ 0.143841.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    alpha: float, temperature: float) -> torch.Tensor:
    """α · T² · mean_i KL_i + (1 − α) · mean_{i: y_i ≠ −100} CE_i (the module docstring's formula).

    With the example of ``soft_label_kl``, label 0, α = 0.5, T = 1: CE = −log ¾ ≈ 0.287682, so
    L = 0.5 · 0.143841 + 0.5 · 0.287682 ≈ 0.215762.
    """
    kl = soft_label_kl(student_logits, teacher_logits, temperature).mean()
    labelled = labels != IGNORE
    if labelled.any():
        ce = F.cross_entropy(student_logits.float()[labelled], labels[labelled])
    else:
        ce = student_logits.new_zeros((), dtype=torch.float32)
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce


def exit_soft_label_losses(exit_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                           alpha: float, temperature: float) -> torch.Tensor:
    """(K,) ``soft_label_loss`` of each exit of (K, B, C) logits against the teacher's (B, C)."""
    return torch.stack([soft_label_loss(z, teacher_logits, labels, alpha, temperature) for z in exit_logits])


# --------------------------------------------------------------------------------------------
# Wiring: the training set with the teacher's logits, and the module whose loss reads them


def unlabeled_texts(ft, task, pair_task: bool = False) -> list[str]:
    """The ``ft.unlabeled`` files' texts: one field per line (``ft.unlabeled_text_field``), or with
    ``unlabeled_text_field: task`` every line read as the task reads its examples (``task``: the
    TaskConfig). A pair task refuses one field per line: the student would learn from texts unlike
    its examples (e.g. CSL abstracts without their keywords)."""
    from edgekit.data import read_corpus

    if not ft.unlabeled:
        return []
    if ft.unlabeled_text_field == "task":
        from edgekit.tasks import read_unlabeled

        return read_unlabeled(task.name, ft.unlabeled, task.text_field, task.text_pair_field, ft.max_unlabeled)
    if pair_task:
        raise UserError(f"task '{task.name}' joins two fields per example, but finetune.unlabeled is "
                        f"read one field per line ('{ft.unlabeled_text_field}'); set finetune.unlabeled_text_field: "
                        "task to read those files as the task reads its examples.")
    return read_corpus(ft.unlabeled, ft.unlabeled_text_field, ft.max_unlabeled)


def unlabeled_segments(ft, task, pair_task: bool = False) -> tuple[list[str], list[list[str]]]:
    """Late interaction: the ``ft.unlabeled`` examples twice, in the same order: as ``unlabeled_texts``
    reads them (what the teacher was fine-tuned on) and as the student's segments (with
    ``unlabeled_text_field: task`` the task's segmenter, e.g. CSL's keywords and abstract; a line of
    one field is one segment)."""
    texts = unlabeled_texts(ft, task, pair_task)
    if not texts:
        return [], []
    if ft.unlabeled_text_field == "task":
        from edgekit.tasks import read_unlabeled_segments

        segments = read_unlabeled_segments(task.name, ft.unlabeled, task.text_field, task.text_pair_field,
                                           ft.max_unlabeled)
    else:
        segments = [[t] for t in texts]
    if len(segments) != len(texts):  # the same files read twice: one example per line each time
        raise ValueError(f"{len(texts)} unlabelled texts but {len(segments)} segmented examples")
    return texts, segments


def _soft_labels(ft, task_labels: list[str], texts: list[str], labels: list[int], extra: list[str], max_length: int):
    """Teacher logits (N, C) of the labelled ``texts`` then the unlabelled ``extra``, and what to record."""
    from edgekit.finetune.logit_cache import teacher_logits

    check_distill_settings(ft.alpha, ft.temperature)
    logits, info = teacher_logits(ft.teacher_run, list(texts) + list(extra), task_labels, max_length, ft.logit_cache)
    teacher_acc = float((logits[: len(labels)].argmax(-1) == torch.tensor(labels)).float().mean())
    return logits, {**info, "labelled_examples": len(texts), "unlabeled_examples": len(extra), "alpha": ft.alpha,
                    "temperature": ft.temperature, "teacher_train_accuracy": round(teacher_acc, 6)}


def attach_teacher(ft, task_labels: list[str], texts: list[str], labels: list[int], tokenizer, max_length: int,
                   task, pair_task: bool = False):
    """The student's training set for task distillation: the labelled ``texts`` plus the unlabelled
    ``ft.unlabeled`` examples (label ``IGNORE``; ``unlabeled_texts``), each example with its teacher
    logits (``teacher_logits`` attribute, (N, C), from the cache when the teacher already saw these texts)."""
    from edgekit.data import TokenizedCorpus

    check_distill_settings(ft.alpha, ft.temperature)
    extra = unlabeled_texts(ft, task, pair_task)
    data = TokenizedCorpus(tokenizer, list(texts) + extra, max_length, labels=list(labels) + [IGNORE] * len(extra))
    data.teacher_logits, info = _soft_labels(ft, task_labels, texts, labels, extra, max_length)
    return data, info


def attach_teacher_to_segments(ft, task_labels: list[str], texts: list[str], labels: list[int], data,
                               max_length: int, extra: list[str] = ()) -> dict:
    """Task distillation for a late-interaction student: ``data`` (a ``SegmentCorpus`` of the labelled
    examples, then the unlabelled ones, ``unlabeled_segments``) gets the teacher's logits of the same
    examples read as ``texts`` and ``extra``, the task's whole text, which is what the teacher was
    fine-tuned on. Soft labels are per example, so segment batches use them unchanged."""
    if len(texts) + len(extra) != len(data):
        raise ValueError(f"{len(texts) + len(extra)} teacher texts for {len(data)} segment examples")
    data.teacher_logits, info = _soft_labels(ft, task_labels, texts, labels, list(extra), max_length)
    return info


def soft_label_module(classifier, early_exit: bool, alpha: float, temperature: float):
    """A ``ClassifierModule`` whose training loss is ``soft_label_loss`` (per exit, weighted, for
    early-exit students) when the batch carries ``teacher_logits``."""
    from edgekit.early_exit import weighted_exit_loss
    from edgekit.finetune.stage import ClassifierModule

    class SoftLabelModule(ClassifierModule):
        def forward(self, batch):
            if "teacher_logits" not in batch:
                return super().forward(batch)
            if self.is_late_interaction:  # segments packed in one sequence: one set of logits (B, C)
                loss = soft_label_loss(self.model.forward_one_pass(batch), batch["teacher_logits"], batch["labels"],
                                       alpha, temperature)
                return loss, {"loss": loss.detach()}
            kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            logits = self.model(**kw).logits
            if self.is_early_exit:  # (K, B, C)
                losses = exit_soft_label_losses(logits, batch["teacher_logits"], batch["labels"], alpha, temperature)
                loss = weighted_exit_loss(losses) if self.early_exit else losses[-1]
                return loss, {"loss": loss.detach(), "last_exit_loss": losses[-1].detach()}
            loss = soft_label_loss(logits, batch["teacher_logits"], batch["labels"], alpha, temperature)
            return loss, {"loss": loss.detach()}

    return SoftLabelModule(classifier, early_exit)
