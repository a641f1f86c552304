"""``edgekit predict``: labels of texts from a fine-tuned checkpoint, at a fixed or a dynamic exit."""

from __future__ import annotations

import torch

from edgekit.albert import check_layer
from edgekit.early_exit.classifier import EarlyExitClassifier, encode_to_layer
from edgekit.errors import UserError

__all__ = ["predict_bundle", "predict_texts"]


def predict_texts(model_dir, texts: list[str], exit_layer: int | None = None, patience: int | None = None,
                  entropy: float | None = None, max_length: int | None = None) -> list[dict]:
    """Label, probability and exit layer of each text: a fixed exit, or a dynamic one (patience or entropy).

    ``model_dir``: a fine-tuned checkpoint, its run directory, or an exported bundle (run by the
    device runtime, see ``predict_bundle``). ``max_length``: default the length it was fine-tuned with.
    """
    from edgekit.checkpoint import (check_model_dir, default_max_length, load_config_of, load_tokenizer,
                                    quiet_loading, resolve_model_dir)

    if sum(x is not None for x in (exit_layer, patience, entropy)) > 1:
        raise UserError("choose one of --exit-layer, --patience and --entropy.")
    # PABEE's patience counts repeats of the previous layer's prediction, so 0 has no meaning (the
    # classifier refuses it too); to exit at the first layer, use --exit-layer 1
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise UserError(f"patience must be an integer of at least 1, got {patience!r}; it counts how many layers "
                        "in a row must repeat the previous prediction (to exit at the first layer, use --exit-layer 1).")
    path = resolve_model_dir(model_dir, bundles=True)
    from edgekit.eval.evaluate import late_interaction_of

    if late_interaction_of(path):  # the texts are the segments of one request
        if exit_layer is not None or patience is not None or entropy is not None or max_length is not None:
            raise UserError("a late-interaction model has one exit and reads each segment at its own length; drop "
                            "--exit-layer, --patience, --entropy and --max-length.")
        from edgekit.late_interaction.serving import predict_segments

        return [predict_segments(path, texts)]
    if (path / "manifest.json").is_file():
        return predict_bundle(path, texts, exit_layer, patience, entropy, max_length)
    model_dir = check_model_dir(path)
    config = load_config_of(model_dir)
    if "AlbertForSequenceClassification" not in (getattr(config, "architectures", None) or []):
        raise UserError(f"'{model_dir}' is not a fine-tuned classifier; run `edgekit finetune` on it first.")
    with quiet_loading():
        clf = EarlyExitClassifier.from_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    enc = tok(texts, padding=True, truncation=True, max_length=max_length or default_max_length(model_dir),
              return_tensors="pt")
    kw = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if patience is not None or entropy is not None:
        mode = "patience" if patience is not None else "entropy"
        _, layers, logits = clf.predict_dynamic(**kw, mode=mode, patience=patience if patience is not None else 2,
                                                entropy_threshold=entropy if entropy is not None else 0.1)
    else:
        k = clf.depth if exit_layer is None else check_layer("exit_layer", exit_layer, clf.depth)
        with torch.no_grad():
            logits = clf.head(encode_to_layer(clf.model.albert, exit_layer=k, **kw)[-1], kw["attention_mask"])
        layers = torch.full((len(texts),), k)
    probs = logits.softmax(-1)
    id2label = clf.model.config.id2label
    return [{"text": t, "label": id2label[int(p.argmax())], "score": float(p.max()), "exit_layer": int(k),
             "scores": [round(float(x), 6) for x in p]} for t, p, k in zip(texts, probs, layers)]


def predict_bundle(bundle_dir, texts: list[str], exit_layer: int | None = None, patience: int | None = None,
                   entropy: float | None = None, max_length: int | None = None,
                   threads: int | None = None) -> list[dict]:
    """``predict_texts`` for an exported bundle, run by the torch-free device runtime (what the phone runs)."""
    from edgekit_device import Predictor

    predictor = Predictor(bundle_dir, threads=threads)
    fixed = predictor.bundle.max_length
    if max_length is not None and max_length != fixed:
        raise UserError(f"the bundle's input length was fixed at export ({fixed} tokens); drop --max-length, "
                        f"or export the model again with --max-length {max_length}.")
    if patience is not None:
        result = predictor.predict(texts, mode="patience", patience=patience)
    elif entropy is not None:
        result = predictor.predict(texts, mode="entropy", entropy_threshold=entropy)
    else:
        result = predictor.predict(texts, exit_layer=exit_layer)
    return [{"text": t, "label": label, "score": float(p.max()), "exit_layer": int(k),
             "scores": [round(float(x), 6) for x in p]}
            for t, label, p, k in zip(texts, result.labels, result.scores, result.exit_layers)]
