"""``edgekit predict``: labels of texts from a fine-tuned checkpoint, at a fixed or a dynamic exit."""

from __future__ import annotations

import torch

from edgekit.albert import check_layer
from edgekit.early_exit.classifier import EarlyExitClassifier, encode_to_layer
from edgekit.errors import UserError

__all__ = ["predict_texts"]


def predict_texts(model_dir, texts: list[str], exit_layer: int | None = None, patience: int | None = None,
                  entropy: float | None = None, max_length: int = 128) -> list[dict]:
    """Label, probability and exit layer of each text: a fixed exit, or a dynamic one (patience or entropy)."""
    from edgekit.checkpoint import check_model_dir, load_config_of, load_tokenizer

    check_model_dir(model_dir)
    config = load_config_of(model_dir)
    if "AlbertForSequenceClassification" not in (getattr(config, "architectures", None) or []):
        raise UserError(f"'{model_dir}' is not a fine-tuned classifier; run `edgekit finetune` on it first.")
    if sum(x is not None for x in (exit_layer, patience, entropy)) > 1:
        raise UserError("choose one of --exit-layer, --patience and --entropy.")
    clf = EarlyExitClassifier.from_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    kw = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if patience is not None or entropy is not None:
        mode = "patience" if patience is not None else "entropy"
        _, layers, logits = clf.predict_dynamic(**kw, mode=mode, patience=patience or 1,
                                                entropy_threshold=entropy if entropy is not None else 0.1)
    else:
        k = clf.depth if exit_layer is None else check_layer("exit_layer", exit_layer, clf.depth)
        with torch.no_grad():
            logits = clf.head(encode_to_layer(clf.model.albert, exit_layer=k, **kw)[-1])
        layers = torch.full((len(texts),), k)
    probs = logits.softmax(-1)
    id2label = clf.model.config.id2label
    return [{"text": t, "label": id2label[int(p.argmax())], "score": float(p.max()), "exit_layer": int(k),
             "scores": [round(float(x), 6) for x in p]} for t, p, k in zip(texts, probs, layers)]
