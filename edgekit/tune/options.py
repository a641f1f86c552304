"""Option tuning's math (M6-Rec section 3.4 and Appendix A.2): soft options as the classifier, and
how many soft prompts a task gets.

Option tuning is prompt tuning whose last C soft prompts are also the classifier: with the summary
vector s of an example (the encoder's output at [CLS], or the token mean) and the soft options
o_1..o_C (the last C of the N soft prompts, as the first layer sees them),

    logit_c = s · o_c                                            (M6-Rec 3.4, Figure 2)

so there is no separate classification layer; the options are trained through both their roles.
"""

from __future__ import annotations

import torch

from edgekit.errors import UserError

TYPICAL_PROMPTS = 128   # A.2: "typically around 128"
PARAMETER_BUDGET = 0.01  # A.2: task parameters ≈ 1% of the model's


def option_logits(summary: torch.Tensor, options: torch.Tensor) -> torch.Tensor:
    """logit_c = s · o_c (M6-Rec 3.4): the summary vectors dotted with the soft options.

    ``summary`` (B, H); ``options`` (C, H), the same options for every example, or (B, C, H), each
    example its own task's options (a mixed-task batch). Returns (B, C).
    """
    if options.dim() == 2:
        return summary @ options.T
    return torch.einsum("bh,bch->bc", summary, options)


def soft_options(prompts: torch.Tensor, num_options: int) -> torch.Tensor:
    """The last C of the N soft prompts (N, E) -> (C, E): the prompts that double as the classifier."""
    return prompts[prompts.shape[0] - num_options:]


def default_prompt_count(model_parameters: int, width: int, other_task_parameters: int, room: int,
                         budget: float = PARAMETER_BUDGET, typical: int = TYPICAL_PROMPTS) -> int:
    """The soft-prompt count N of Appendix A.2: task parameters ≈ ``budget`` of the model's.

        N = min(round((budget · P − P_other) / E), typical, room)

    P: the base model's parameters; E: the embedding width (one soft prompt is E numbers);
    P_other: the task's other parameters (adapters, head, special-token embeddings); ``typical``:
    A.2's "typically around 128", a cap for models whose 1% would need thousands of prompts (an
    embedding table of 96M parameters makes e5-small's 1% about 3,000 prompts, each one position of
    every forward pass); ``room``: the positions the model has left after the text. At least 1.
    """
    wanted = round((budget * model_parameters - other_task_parameters) / width)
    return max(1, min(wanted, typical, room))


def check_prompt_count(prompts: int, positions: int, max_length: int, num_options: int = 0,
                       method: str = "prompt") -> int:
    """``prompts`` if a model with ``positions`` positions can read them before a ``max_length`` text."""
    if prompts < max(1, num_options):
        need = (f"at least the task's {num_options} classes (the last C soft prompts are the options)"
                if num_options else "at least 1")
        raise UserError(f"tune.prompts is {prompts}, but {method} tuning needs {need}; raise tune.prompts.")
    if prompts + max_length > positions:
        raise UserError(f"tune.prompts {prompts} plus task.max_length {max_length} is more than the model's "
                        f"{positions} positions; use at most {max(positions - max_length, 0)} prompts or a shorter "
                        "task.max_length.")
    return prompts
