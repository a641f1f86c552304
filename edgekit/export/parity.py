"""Export-time checks: the bundle must predict what the PyTorch model predicts.

``check_parity`` runs the written bundle through the device runtime (``edgekit_device``, exactly
what ships) and the PyTorch model on the same inputs, at every exit the bundle offers, and
measures what a user sees, whether the predicted class changes::

    raw_agreement = (1/N) · #{i : argmax bundle_i = argmax torch_i}
    near_ties     = #{i : the argmax flips and torch's top-1 − top-2 margin < NEAR_TIE_MARGIN}
    agreement     = raw_agreement + near_ties / N

An exit fails when ``agreement < min_agreement``. The near-tie margin is fixed (1e-3 in logits),
never derived from the differences being judged: an example the reference itself separates by
less than that has no preferred class, and any float re-ordering may flip it. Defaults
(``MIN_AGREEMENT``), from dynamic-int8 ONNX exports measured on 256 inputs, worst exit:

- fp32 0.999: a float graph only reorders sums (|Δlogit| < 1e-5 in every export measured), so
  every example that is not a near-tie must agree; 0.999 allows one flip in a thousand inputs,
  none in the default 256.
- int8 0.98: int8 bundles of trained models changed 0-1.6% of predictions: a 15-class TNEWS student (4
  shared layers, hidden 128, 400 steps) 98.8% on its dev texts and 98.4% on generated ids; a
  tiny trained two-class model 100% on its dev texts, 98.4% on generated ids; the untrained tiny
  test classifier (random weights, near-tied logits) 97.7% raw, 98.0% with its one near-tie.
  The same bundles with one weight matrix of the shared layer scaled by 3 agreed on 21-75%
  (value or FFN output weights, TNEWS student) or 67.5% (value weights, tiny model); a damage
  that changes no prediction passes int8, which is what this gate is about (fp32 catches it by
  the logit bound below).

fp32 also bounds the logits, which catches a broken graph before its argmaxes show it::

    max |logits_bundle − logits_torch| ≤ atol + rtol · max |logits_torch|,  atol 1e-4, rtol 1e-3

int8 logits move with the head's scale (a barely trained head has small logits, so a relative
bound refuses a sound bundle), so for int8 the max and 99th percentile of |Δlogit| are reported,
not gated. Inputs are the task's texts when there are any (``sample_texts``; ``edgekit export
--task`` and ``edgekit run`` pass the dev split), else generated token sequences; the manifest's
``parity.source`` says which and ``parity.inputs`` what they were.
"""

from __future__ import annotations

import numpy as np
import torch

from edgekit.errors import UserError

MIN_AGREEMENT = {"fp32": 0.999, "int8": 0.98}
NEAR_TIE_MARGIN = 1e-3
TOLERANCES = {"fp32": {"atol": 1e-4, "rtol": 1e-3}, "int8": None}
SAMPLES = 256

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


def argmax_agreement(reference: np.ndarray, got: np.ndarray, margin: float = NEAR_TIE_MARGIN) -> dict:
    """Argmax agreement of ``got`` with ``reference`` ((N, C) logits each).

    raw_agreement = (1/N) · #{i : argmax got_i = argmax reference_i}
    near_ties     = #{i : the argmax flips and reference_i's top1 − top2 < margin}
    agreement     = raw_agreement + near_ties / N
    """
    n = len(reference)
    flips = reference.argmax(-1) != got.argmax(-1)
    top2 = np.sort(reference, axis=-1)[:, -2:] if reference.shape[-1] > 1 else np.zeros((n, 2))
    near_tie = flips & (top2[:, 1] - top2[:, 0] < margin)
    raw = 1.0 - float(flips.sum()) / max(n, 1)
    return {"raw_agreement": raw, "near_ties": int(near_tie.sum()),
            "agreement": raw + float(near_tie.sum()) / max(n, 1), "flips": int(flips.sum())}


def logit_differences(reference: np.ndarray, got: np.ndarray) -> dict:
    """max and 99th percentile over examples of d_i = max_c |got_ic − reference_ic|, and max |reference|."""
    d = np.abs(got - reference).max(-1)
    return {"max_abs_diff": float(d.max()), "p99_abs_diff": float(np.quantile(d, 0.99)),
            "max_abs_logit": float(np.abs(reference).max())}


def logit_bound(tolerance: dict | None, max_abs_logit: float) -> float | None:
    """atol + rtol · max |reference logit|, or None where the precision has no logit bound (int8)."""
    return None if tolerance is None else tolerance["atol"] + tolerance["rtol"] * max_abs_logit


def judge_exit(reference: np.ndarray, got: np.ndarray, precision: str, min_agreement: float) -> dict:
    """One exit's parity entry: agreement, logit differences, and ``failed`` (None, "agreement" or "logits")."""
    entry = {**argmax_agreement(reference, got), **logit_differences(reference, got)}
    bound = logit_bound(TOLERANCES[precision], entry["max_abs_logit"])
    entry["logit_bound"] = bound
    if bound is not None and not entry["max_abs_diff"] <= bound:
        entry["failed"] = "logits"
    elif entry["agreement"] < min_agreement:
        entry["failed"] = "agreement"
    else:
        entry["failed"] = None
    return entry


def failure_sentence(per_exit: list[dict], precision: str, min_agreement: float, inputs: str,
                     generated: bool = False, int8_fix: str | None = None) -> str:
    """The one sentence a failed parity check says: the worst exit, its numbers, the inputs, the way out."""
    failed = [e for e in per_exit if e["failed"]]
    broken = [e for e in failed if e["failed"] == "logits"]
    more = f" (and {len(failed) - 1} more exit{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
    if broken:
        e = max(broken, key=lambda e: e["max_abs_diff"] / e["logit_bound"])
        return (f"the exported {precision} bundle does not compute what the PyTorch model computes: at exit {e['exit']}{more} "
                f"its logits differ by up to {e['max_abs_diff']:.3g} on {inputs}, beyond the {e['logit_bound']:.3g} "
                f"that float rounding explains (argmax agreement {e['raw_agreement']:.1%}), so no bundle was written; "
                "this is a bug in edgekit's exporter, please report it.")
    e = min(failed, key=lambda e: e["agreement"])
    ties = f", {e['near_ties']} near-tie flip{'s' if e['near_ties'] != 1 else ''} excused" if e["near_ties"] else ""
    # Not static int8: the per-layer bundle runs one layer graph at every depth, so one static scale must cover
    # every depth's range (benchmarks/results/int8_depth.md); dynamic ranges with float modules fare better.
    fix = (int8_fix or "export with --accuracy-aware (ONNX: Neural Compressor keeps the modules that change "
           "predictions in float), export fp32, or lower --min-agreement if you accept that many changed predictions"
           if precision == "int8"
           else "this is likely a bug in edgekit's exporter (please report it), or lower --min-agreement knowingly")
    if generated:  # random token ids are not what the model will see: real texts are the fairer judge
        fix = "check on real texts (--task with --data-dir, or --samples FILE), " + fix
    return (f"the exported {precision} bundle changes the PyTorch model's predictions: exit {e['exit']}{more} predicts "
            f"the same class on {e['raw_agreement']:.1%} of {inputs}{ties}, below the {precision} threshold "
            f"{min_agreement:.1%}, so no bundle was written; {fix}.")


def check_parity(classifier, predictor, ids: np.ndarray, mask: np.ndarray, precision: str, source: str,
                 min_agreement: float | None = None, inputs: str | None = None) -> dict:
    """Compare the bundle with the PyTorch model at each exit; raise ``UserError`` if any exit fails.

    ``inputs`` says what the inputs were, a plural noun phrase (e.g. "texts of the tnews dev
    split"); the manifest and the failure sentence carry it.
    """
    min_agreement = MIN_AGREEMENT[precision] if min_agreement is None else float(min_agreement)
    inputs = inputs or ("sample texts" if source == "text" else "generated token sequences")
    exits = predictor.exits
    reference = reference_logits(classifier, ids, mask, max(exits))[[k - 1 for k in exits]]
    got = bundle_logits(predictor, ids, mask)
    per_exit = [{"exit": k, **judge_exit(ref, out, precision, min_agreement)} for k, ref, out in zip(exits, reference, got)]
    if any(e["failed"] for e in per_exit):
        raise UserError(failure_sentence(per_exit, precision, min_agreement, f"{len(ids)} {inputs}",
                                         generated=source == "generated"))
    for e in per_exit:
        del e["failed"]
    return {"samples": int(len(ids)), "source": source, "inputs": inputs, "min_agreement": min_agreement,
            "near_tie_margin": NEAR_TIE_MARGIN, "tolerance": TOLERANCES[precision],
            "agreement": min(e["agreement"] for e in per_exit),
            "raw_agreement": min(e["raw_agreement"] for e in per_exit),
            "near_ties": sum(e["near_ties"] for e in per_exit),
            "max_abs_diff": max(e["max_abs_diff"] for e in per_exit),
            "p99_abs_diff": max(e["p99_abs_diff"] for e in per_exit),
            "per_exit": per_exit}
