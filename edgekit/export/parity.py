"""Export-time checks: the bundle must compute what the PyTorch model computes.

``check_parity`` runs the written bundle through the device runtime (``edgekit_device``, exactly
what ships) and the PyTorch model on the same inputs, at every exit the bundle offers, and fails
the export when any exit's argmax agreement is below ``min_agreement`` (default 0.99) or its
largest logit difference exceeds the precision's tolerance::

    max |logits_bundle - logits_torch| <= atol + rtol * max |logits_torch|

fp32: atol 1e-4, rtol 1e-3 (float rounding of a different kernel order); int8: atol 0.05, rtol
0.25 (8-bit weights and activations move logits by a few percent of their range; agreement is
the real gate). Inputs are the sample texts when given, else generated token sequences.

Agreement leaves out near-ties: a flip on an example whose PyTorch top-2 margin is within twice
the exit's ordinary numeric difference (the 90th percentile over the samples of each example's
largest |Δlogit|) is what that difference does to any near-tie, not a wrong bundle (a 15-class
head has such examples; an undertrained one has many). A flip with a clear margin counts, and
so does a bundle whose differences are large everywhere: the logit bound catches that.
``raw_agreement`` and ``near_ties`` are reported beside ``agreement``.
"""

from __future__ import annotations

import numpy as np
import torch

from edgekit.errors import UserError

TOLERANCES = {"fp32": {"atol": 1e-4, "rtol": 1e-3}, "int8": {"atol": 0.05, "rtol": 0.25}}
MIN_AGREEMENT = 0.99
SAMPLES = 64

# Texts the device tokenizer is checked on when no sample texts are given: the scripts and the
# normalizations (full-width forms, accents, case, CJK, emoji, controls) where tokenizers differ.
PROBE_TEXTS = [
    "这家店的菜很好吃，服务也很热情！",
    "Hello, World! ÀÉÎÕÜ àéîõü Straße ΟΔΟΣ",
    "ＡＢＣ１２３　全角文字和半角 abc 123",
    "emoji 😀👍🏽 and  double  spaces\tand\ttabs\r\nnew line",
    "日本語のテキスト、한국어 텍스트, русский текст.",
    "e\u0301 combining, \u00a0nbsp, zero\u200bwidth, ﬁ ligature, ㍿",
    "",
]


def check_device_tokenizer(hf_tokenizer, device_tokenizer, texts, max_length: int) -> dict:
    """Compare the device tokenizer's ids with the Hugging Face tokenizer's; raise on any difference."""
    texts = list(texts)
    mismatches = []
    for text in texts:
        expected = hf_tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        got = device_tokenizer.encode(text, max_length)
        if got != expected:
            mismatches.append(text)
    if mismatches:
        # Not a user error: the converter produced a tokenizer that disagrees with its source.
        raise RuntimeError(f"the device tokenizer disagrees with the checkpoint's tokenizer on {len(mismatches)} of "
                           f"{len(texts)} texts (first: {mismatches[0]!r}); this is a bug in edgekit's device "
                           "tokenizer, please report it with that text.")
    return {"texts": len(texts), "identical": len(texts)}


def sample_inputs(device_tokenizer, texts, max_length: int, vocab_size: int, special_ids, count: int = SAMPLES,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(input_ids, attention_mask, source): tokenized texts, or random token sequences of mixed lengths."""
    texts = [t for t in (texts or []) if t and t.strip()][:count]
    if texts:
        ids, mask = device_tokenizer.encode_batch(texts, max_length)
        return ids, mask, "text"
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(sorted(special_ids), dtype=np.int64))
    prefix, suffix = device_tokenizer.prefix, device_tokenizer.suffix
    longest = max(1, min(max_length - len(prefix) - len(suffix), 48))
    rows = [prefix + rng.choice(allowed, size=int(rng.integers(1, longest + 1))).tolist() + suffix for _ in range(count)]
    length = max(map(len, rows))
    ids = np.full((count, length), device_tokenizer.pad_id, dtype=np.int64)
    mask = np.zeros((count, length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask, "generated"


@torch.no_grad()
def reference_logits(classifier, ids: np.ndarray, mask: np.ndarray, max_layer: int, batch: int = 16) -> np.ndarray:
    """PyTorch logits of exits 1..max_layer, (K, B, C)."""
    parts = []
    for start in range(0, len(ids), batch):
        out = classifier(torch.from_numpy(ids[start:start + batch]), torch.from_numpy(mask[start:start + batch]),
                         exit_layer=max_layer)
        parts.append(out.logits.float().numpy())
    return np.concatenate(parts, axis=1)


def bundle_logits(predictor, ids: np.ndarray, mask: np.ndarray, batch: int = 16) -> np.ndarray:
    """The bundle's logits of every exit it offers, (K, B, C)."""
    return np.concatenate([predictor.exit_logits(ids[s:s + batch], mask[s:s + batch]) for s in range(0, len(ids), batch)],
                          axis=1)


def decided_agreement(reference: np.ndarray, got: np.ndarray, quantile: float = 0.9) -> dict:
    """Argmax agreement of ``got`` with ``reference`` ((B, C) logits each), near-ties left out.

    noise = the ``quantile`` of d_i = max_c |got_ic − reference_ic| over the examples;
    example i is a near-tie when it flips and its reference margin top1 − top2 ≤ 2·noise.
    agreement = 1 − (flips that are not near-ties) / (examples that are not near-ties).
    """
    flips = reference.argmax(-1) != got.argmax(-1)
    noise = float(np.quantile(np.abs(got - reference).max(-1), quantile))
    top2 = np.sort(reference, axis=-1)[:, -2:]
    near_tie = flips & (top2[:, 1] - top2[:, 0] <= 2 * noise)
    decided = int((~near_tie).sum())
    return {"agreement": 1.0 - float((flips & ~near_tie).sum()) / max(decided, 1),
            "raw_agreement": 1.0 - float(flips.mean()), "near_ties": int(near_tie.sum()), "noise": noise}


def check_parity(classifier, predictor, ids: np.ndarray, mask: np.ndarray, precision: str, source: str,
                 min_agreement: float = MIN_AGREEMENT) -> dict:
    """Compare the bundle with the PyTorch model at each exit; raise ``UserError`` if any exit fails."""
    exits = predictor.exits
    reference = reference_logits(classifier, ids, mask, max(exits))[[k - 1 for k in exits]]
    got = bundle_logits(predictor, ids, mask)
    tol = TOLERANCES[precision]
    per_exit, failures = [], []
    for k, ref, out in zip(exits, reference, got):
        scale = float(np.abs(ref).max())
        diff = float(np.abs(ref - out).max())
        a = decided_agreement(ref, out) if ref.shape[-1] > 1 else {"agreement": 1.0}
        agree = a["agreement"]
        bound = tol["atol"] + tol["rtol"] * scale
        per_exit.append({"exit": k, **a, "max_abs_diff": diff, "max_abs_logit": scale})
        if agree < min_agreement or not diff <= bound:
            failures.append(f"exit {k}: argmax agreement {agree:.1%} (near-ties aside), max |Δlogit| {diff:.3g} (allowed: "
                            f"{min_agreement:.0%} and {bound:.3g})")
    if failures:
        hint = (" try fp32, calibration texts (--calibration) or a lower --min-agreement" if precision == "int8"
                else " this is likely a bug in the exporter; please report it")
        raise UserError(f"the exported bundle does not reproduce the PyTorch model on {len(ids)} {source} inputs "
                        f"({'; '.join(failures[:3])}); no bundle was written:{hint}.")
    return {"samples": int(len(ids)), "source": source, "min_agreement": min_agreement, "tolerance": tol,
            "agreement": min(e["agreement"] for e in per_exit), "max_abs_diff": max(e["max_abs_diff"] for e in per_exit),
            "per_exit": per_exit}
