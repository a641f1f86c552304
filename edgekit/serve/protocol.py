"""What the HTTP endpoints accept and answer (pure: JSON values in, Python values or a ``RequestError`` out).

``POST /predict``        {"segments": ["Male.", "Clicked X.", "Will click Z?"]}
                      -> {"label": "1", "scores": {"0": 0.2, "1": 0.8}, "logits": [..], "cache": {"hits": 2, "misses": 1}}
``POST /predict/batch``  {"requests": [{"segments": [...]}, ...]}
                      -> {"results": [<as /predict>, ...], "cache": {"hits": .., "misses": ..}}

Every refusal is one sentence in {"error": ...}: 400 for a body that is not JSON, 413 for one over
the size limit, 422 for JSON of the wrong shape, 503 when the queue is full.
"""

from __future__ import annotations

import json

import numpy as np

from edgekit.serve.engine import Prediction, softmax

EXAMPLE = '{"segments": ["first segment", "second segment"]}'


class RequestError(Exception):
    """A request refused with ``status`` and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def parse_json(body: bytes):
    """The body's JSON value, or a 400 naming what is wrong with it."""
    if not body.strip():
        raise RequestError(400, f"the request body is empty; send JSON such as {EXAMPLE}.")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "the request body is not UTF-8 text; send JSON encoded as UTF-8.") from None
    except RecursionError:
        raise RequestError(400, "the request body nests too deeply; send a flat JSON object.") from None
    except ValueError as e:
        raise RequestError(400, f"the request body is not valid JSON ({e}); send JSON such as {EXAMPLE}.") from None


def parse_segments(value, max_segments: int, max_chars: int, where: str = "") -> list[str]:
    """The segment texts of one request object ``{"segments": [...]}``, or a 422 sentence.

    ``where`` prefixes the sentence in a batch ("request 3: ...")."""
    if not isinstance(value, dict):
        raise RequestError(422, f"{where}the request must be a JSON object such as {EXAMPLE}, got {_kind(value)}.")
    extra = sorted(set(value) - {"segments"})
    if extra:
        raise RequestError(422, f"{where}unknown field {extra[0]!r}; a request has only \"segments\", e.g. {EXAMPLE}.")
    if "segments" not in value:
        raise RequestError(422, f"{where}the request has no \"segments\"; send {EXAMPLE}.")
    segments = value["segments"]
    if not isinstance(segments, list):
        raise RequestError(422, f"{where}\"segments\" must be a list of strings, got {_kind(segments)}.")
    if not segments:
        raise RequestError(422, f"{where}\"segments\" is empty; send at least one segment.")
    if len(segments) > max_segments:
        raise RequestError(422, f"{where}{len(segments)} segments, but the model takes at most {max_segments}; "
                                "send fewer or merge some.")
    for i, s in enumerate(segments):
        if not isinstance(s, str):
            raise RequestError(422, f"{where}segment {i} is {_kind(s)}, not a string; send segments as text.")
        if not s.strip():
            raise RequestError(422, f"{where}segment {i} is empty; drop it or give it text.")
        if len(s) > max_chars:
            raise RequestError(422, f"{where}segment {i} has {len(s)} characters, more than the server's limit "
                                    f"of {max_chars} (--max-segment-chars); shorten or split it.")
    return segments


def parse_batch(value, max_requests: int, max_segments: int, max_chars: int) -> list[list[str]]:
    """The segment lists of ``{"requests": [{"segments": [...]}, ...]}``, or a 422 sentence."""
    example = '{"requests": [' + EXAMPLE + ", ...]}"
    if not isinstance(value, dict):
        raise RequestError(422, f"the batch must be a JSON object such as {example}, got {_kind(value)}.")
    extra = sorted(set(value) - {"requests"})
    if extra:
        raise RequestError(422, f"unknown field {extra[0]!r}; a batch has only \"requests\", e.g. {example}.")
    requests = value.get("requests")
    if not isinstance(requests, list):
        raise RequestError(422, f"\"requests\" must be a list of request objects such as {example}, "
                                f"got {_kind(requests)}.")
    if not requests:
        raise RequestError(422, "\"requests\" is empty; send at least one request.")
    if len(requests) > max_requests:
        raise RequestError(422, f"{len(requests)} requests in one batch, but the server takes at most {max_requests} "
                                "(--max-queue); split the batch.")
    return [parse_segments(r, max_segments, max_chars, f"request {i}: ") for i, r in enumerate(requests)]


def prediction_json(p: Prediction, labels: list[str]) -> dict:
    """One request's answer: the top label, a probability per label, the logits, the cache's share."""
    probs = softmax(p.logits)
    return {"label": labels[int(np.argmax(p.logits))],
            "scores": {label: float(q) for label, q in zip(labels, probs)},
            "logits": [float(z) for z in p.logits],
            "cache": {"hits": p.hits, "misses": p.misses}}
