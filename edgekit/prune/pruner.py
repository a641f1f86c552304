"""Unstructured magnitude pruning of every embedding table and linear layer (M6-Rec section 3.5).

The pruner owns the masks and nothing else; the schedule (``edgekit.prune.schedule``) says how
sparse to be at a step and the training loop owns both, as in ``torch.ao.pruning``::

    pruner = MagnitudePruner()             # scope="layer" | "global", include=/exclude= regexes
    pruner.prepare(model)
    for step, batch in ...:
        s = cubic_sparsity(step, 0.0, 0.8, begin, end, every)
        if s != pruner.sparsity:
            pruner.update_masks(s)         # recompute masks by magnitude and zero the weights
        loss.backward()
        pruner.mask_gradients()            # pruned weights get no gradient (clean Adam moments)
        optimizer.step()
        pruner.apply_masks()               # re-zero what momentum moved: zeros stay exactly zero
    pruner.squash_mask()                   # drop the masks; the model is a plain model

Why not ``torch.ao.pruning`` (WeightNormSparsifier + CubicSL)? Its per-tensor math is right when
configured for this job (``sparse_block_shape=(1, 1)``, ``zeros_per_block=1`` gives exactly
round(s·numel) zeros per tensor, embeddings included if listed by hand), but the rest does not fit:

* defaults are a different method: (1, 4) blocks ranked by L2 norm, and ``nn.Linear`` only, so
  the embedding tables, 2.7M of M6-Edge's 10.5M parameters, are skipped unless listed;
* there is no global scope (one threshold over all tensors);
* ``CubicSL`` changes the sparsity at every step rather than every Δt, takes s_f from the
  sparsifier's configuration and calls ``step()`` in its constructor, so it cannot be the pure
  function of the step we want;
* it masks through a parametrization: ALBERT's one shared layer recomputes ``weight * mask`` at
  each of its 24 uses per forward, and a checkpoint saved while pruning holds
  ``...parametrizations.weight.original`` keys, so ``AlbertModel.from_pretrained`` reports them as
  unexpected and silently re-initialises every pruned weight (checked with torch 2.13 and
  transformers 5.23).

So this is our own: masks are boolean tensors applied to the weights in place, the model is always
a plain ``transformers`` model (save it at any step), and shared weights (ALBERT's one layer, tied
embeddings) are one entry, counted once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.prune.schedule import check_sparsity

SCOPES = ("layer", "global")


def num_pruned(sparsity: float, numel: int) -> int:
    """How many of ``numel`` weights are zero at ``sparsity``: round(sparsity · numel)."""
    return round(sparsity * numel)


def magnitude_mask(weight: torch.Tensor, n_zeros: int) -> torch.Tensor:
    """Boolean keep-mask that drops the ``n_zeros`` entries of smallest |w| (ties: lower index first).

    Already-pruned weights are exactly zero, so they are dropped again first and a growing
    ``n_zeros`` never revives a pruned weight.
    """
    flat = weight.detach().abs().flatten()
    if n_zeros <= 0:
        return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    threshold = flat.kthvalue(n_zeros).values  # a linear-time selection, not a sort
    keep = flat > threshold
    # |w| == threshold may hold for more entries than are left to drop: keep the later ones
    tied = (flat == threshold).nonzero().squeeze(1)
    keep[tied[n_zeros - int((flat < threshold).sum()):]] = True
    return keep.view(weight.shape)


def _compile(patterns: Sequence[str] | str | None, kind: str) -> list[tuple[str, re.Pattern]]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for p in patterns:
        try:
            compiled.append((p, re.compile(p)))
        except re.error as e:
            raise UserError(f"{kind} pattern {p!r} is not a valid regular expression ({e}); "
                            "fix the pattern (it is matched with re.search against parameter names).") from None
    return compiled


class MagnitudePruner:
    """Gradual magnitude pruning masks for a model's ``nn.Embedding`` and ``nn.Linear`` weights.

    Args:
        scope: ``"layer"`` prunes each tensor to the target by its own magnitudes (exactly
            round(s·numel) zeros per tensor); ``"global"`` ranks all selected weights together
            under one threshold (round(s·total) zeros overall, unevenly spread).
        include: regexes (``re.search`` over parameter names); when given, only the matching
            embedding/linear weights are pruned.
        exclude: regexes; matching weights are left dense (e.g. ``r"classifier"``).
    """

    def __init__(self, scope: str = "layer", include: Sequence[str] | str | None = None,
                 exclude: Sequence[str] | str | None = None):
        if scope not in SCOPES:
            raise UserError(f"pruning scope must be one of {', '.join(SCOPES)}, got {scope!r}.")
        self.scope = scope
        self._include = _compile(include, "include")
        self._exclude = _compile(exclude, "exclude")
        self._params: dict[str, nn.Parameter] = {}
        self._masks: dict[str, torch.Tensor] = {}
        self.sparsity: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> None:
        """Select the weights to prune and start with all-ones masks (nothing pruned yet)."""
        if self._params:
            raise RuntimeError("this MagnitudePruner is already prepared; call squash_mask() or use a new one")
        prunable = {id(m.weight) for m in model.modules()
                    if isinstance(m, (nn.Linear, nn.Embedding)) and isinstance(m.weight, nn.Parameter)}
        # named_parameters() yields a shared tensor once, under its first name
        candidates = {n: p for n, p in model.named_parameters() if id(p) in prunable}
        if not candidates:
            raise UserError(f"{type(model).__name__} has no nn.Linear or nn.Embedding weights to prune; "
                            "pass a transformer such as the ALBERT student.")

        selected = dict(candidates)
        for kind, patterns, keep_match in (("include", self._include, True), ("exclude", self._exclude, False)):
            for p, rx in patterns:
                if not any(rx.search(n) for n in candidates):
                    raise UserError(f"{kind} pattern {p!r} matches no embedding or linear weight; names look "
                                    f"like {next(iter(candidates))!r}, so fix or drop the pattern.")
            if patterns:
                selected = {n: w for n, w in selected.items()
                            if any(rx.search(n) for _, rx in patterns) == keep_match}
        if not selected:
            raise UserError("the include/exclude patterns leave no weight to prune; loosen them.")

        self._params = selected
        self._masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in selected.items()}
        self.sparsity = 0.0

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Recompute every mask by weight magnitude for target ``sparsity`` and zero the weights."""
        self._require_prepared()
        check_sparsity(sparsity)
        if self.scope == "layer":
            for name, w in self._params.items():
                self._masks[name] = magnitude_mask(w, num_pruned(sparsity, w.numel()))
        else:
            flat = torch.cat([w.detach().abs().flatten().float() for w in self._params.values()])
            keep = magnitude_mask(flat, num_pruned(sparsity, flat.numel()))
            for (name, w), part in zip(self._params.items(), keep.split([w.numel() for w in self._params.values()])):
                self._masks[name] = part.view(w.shape).to(w.device)
        self.sparsity = float(sparsity)
        self.apply_masks()

    @torch.no_grad()
    def keep_zeros(self) -> float:
        """Masks = the weights' current non-zeros, so training goes on with a fixed sparsity pattern
        (fine-tuning a pruned model); returns the resulting sparsity of the selected weights."""
        self._require_prepared()
        kept = total = 0
        for name, w in self._params.items():
            self._masks[name] = w.detach() != 0
            kept += int(self._masks[name].sum())
            total += w.numel()
        self.sparsity = 1.0 - kept / total
        return self.sparsity

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights; call after ``backward()``, before ``optimizer.step()``."""
        for name, w in self._params.items():
            if w.grad is not None:
                w.grad.masked_fill_(~self._mask_for(name, w), 0)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Set pruned weights to exactly zero; call after ``optimizer.step()`` (momentum moves them)."""
        for name, w in self._params.items():
            w.masked_fill_(~self._mask_for(name, w), 0)

    def squash_mask(self) -> None:
        """Fold the masks into the weights for good and forget the model; it is a plain model again."""
        self._require_prepared()
        self.apply_masks()
        self._params, self._masks, self.sparsity = {}, {}, None

    # -- introspection and checkpoints -------------------------------------------------------

    @property
    def tensor_names(self) -> list[str]:
        """Names of the selected weights (one name per shared tensor)."""
        return list(self._params)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Boolean keep-masks by tensor name (True = kept)."""
        return dict(self._masks)

    def state_dict(self) -> dict:
        """Masks (on CPU) and the last target sparsity, for ``torch.save`` beside a training checkpoint."""
        self._require_prepared()
        return {"scope": self.scope, "sparsity": self.sparsity,
                "masks": {n: m.cpu() for n, m in self._masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore masks saved by ``state_dict()`` into a pruner prepared on the same model, and apply them."""
        self._require_prepared()
        masks = state["masks"]
        if set(masks) != set(self._params):
            diff = sorted(set(masks) ^ set(self._params))
            raise UserError(f"the saved pruning masks do not match the selected weights (first difference: "
                            f"{diff[0]!r}); prepare the same model with the same include/exclude patterns.")
        for name, m in masks.items():
            w = self._params[name]
            if tuple(m.shape) != tuple(w.shape):
                raise UserError(f"the saved mask for {name!r} has shape {tuple(m.shape)} but the weight has "
                                f"{tuple(w.shape)}; resume from a checkpoint of the same model shape.")
            self._masks[name] = m.to(device=w.device, dtype=torch.bool)
        self.sparsity = state.get("sparsity")
        self.apply_masks()

    # -- helpers -----------------------------------------------------------------------------

    def _mask_for(self, name: str, w: torch.Tensor) -> torch.Tensor:
        mask = self._masks[name]
        if mask.device != w.device:  # the model was moved after prepare()
            mask = self._masks[name] = mask.to(w.device)
        return mask

    def _require_prepared(self) -> None:
        if not self._params:
            raise RuntimeError("call MagnitudePruner.prepare(model) first")

    def __repr__(self) -> str:
        return (f"MagnitudePruner(scope={self.scope!r}, tensors={len(self._params)}, "
                f"sparsity={self.sparsity})")
