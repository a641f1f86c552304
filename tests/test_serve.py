"""``edgekit serve`` (issue #14): the cache, the micro-batcher, real HTTP on a free port, a real Redis.

Servers run under uvicorn in a thread of this process (``start_server``), one as a separate
``edgekit serve`` process; Redis is Debian's ``redis-server`` on a free loopback port in a temp dir.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import UserError
from edgekit.serve import LRUCache, SegmentEngine, ServeConfig, decode_array, encode_array, segment_key, softmax
from edgekit.serve import start_server
from edgekit.serve.cache import ENTRY_OVERHEAD, backoff_delay, parse_bytes
from edgekit.serve.protocol import RequestError, parse_batch, parse_json, parse_segments

# --------------------------------------------------------------------------------------------
# helpers


class FakeModel:
    """A deterministic ``SegmentModel`` in numpy: a segment encodes to (min(len, 6), 3) rows of its
    length; a request's logits are (Σ of all values, number of segments). Counts what it encodes."""

    model_hash = "fake-model"
    max_segments = 4
    max_segment_tokens = 6
    labels = ["sum", "count"]

    def __init__(self, delay_s: float = 0.0):
        self.encoded: list[str] = []
        self.interact_calls: list[int] = []
        self.delay_s = delay_s

    def encode_segments(self, texts):
        self.encoded.extend(texts)
        return [np.full((min(len(t), 6), 3), len(t), dtype=np.float32) for t in texts]

    def interact(self, requests):
        self.interact_calls.append(len(requests))
        time.sleep(self.delay_s)
        return np.array([[sum(float(p.sum()) for p in r), len(r)] for r in requests], dtype=np.float32)


def http(url: str, body=None, method: str | None = None, headers: dict | None = None):
    """(status, parsed JSON or text) of one request; ``body`` a dict (sent as JSON) or raw bytes."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get("content-type", "")
    return status, (json.loads(raw) if "json" in kind else raw.decode())


def metric(text: str, name: str, **labels) -> float:
    """The value of one Prometheus sample (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# pure pieces, by hand


def test_segment_key_by_hand():
    assert segment_key("m1", "hello") == "604d1408bb57c873c52d46849ad9a08dd34801f7b643d065aada2f3b4d631d59"
    assert segment_key("m2", "hello") != segment_key("m1", "hello")
    assert segment_key("ab", "c") != segment_key("a", "bc")


def test_array_bytes_layout_by_hand_and_refusals():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    blob = encode_array(a)
    assert len(blob) == 4 + 4 + 8 + 24
    assert blob[:16] == b"EKS1" + struct.pack("<III", 2, 2, 3)
    assert blob[16:20] == struct.pack("<f", 0.0) and blob[-4:] == struct.pack("<f", 5.0)
    back = decode_array(blob)
    assert back.dtype == np.float32 and back.shape == (2, 3) and np.array_equal(back, a)
    assert back.flags.writeable
    for bad in (b"", b"\x80\x04pickle", blob[:-4], blob + b"\0\0\0\0", b"EKS1" + struct.pack("<I", 99)):
        with pytest.raises(ValueError):
            decode_array(bad)


def test_parse_bytes_by_hand():
    assert parse_bytes("512") == 512
    assert parse_bytes("64k") == 65536
    assert parse_bytes("1.5K") == 1536
    assert parse_bytes("256M") == parse_bytes("256MiB") == 268435456
    assert parse_bytes("1G") == 1 << 30
    for bad in ("lots", "-1M", "inf", ""):
        with pytest.raises(UserError, match="--cache-bytes must be a size such as"):
            parse_bytes(bad)


def test_backoff_by_hand():
    assert [backoff_delay(n, 0.5, 3.0) for n in (1, 2, 3, 4, 10)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_softmax_by_hand():
    assert np.allclose(softmax(np.array([0.0, np.log(3.0)])), [0.25, 0.75])
    assert np.allclose(softmax(np.array([1000.0, 1000.0])), [0.5, 0.5])  # no overflow


def test_lru_is_bounded_in_bytes_and_evicts_least_recent():
    a = np.zeros((10, 10), dtype=np.float32)  # 400 bytes
    cost = 400 + 64 + ENTRY_OVERHEAD
    assert LRUCache.cost("k" * 64, a) == cost
    cache = LRUCache(3 * cost)
    keys = [f"{i:064d}" for i in range(4)]
    cache.put_many({k: a for k in keys[:3]})
    assert len(cache) == 3 and cache.bytes == 3 * cost
    cache.get_many([keys[0]])                     # 0 is now the most recent: 1 goes first
    cache.put_many({keys[3]: a})
    assert cache.bytes == 3 * cost and cache.stats.evictions == 1
    assert [x is not None for x in cache.get_many(keys)] == [True, False, True, True]
    cache.put_many({"big": np.zeros((40, 40), dtype=np.float32)})  # larger than the whole cache: not kept
    assert len(cache) == 3
    assert (cache.stats.hits, cache.stats.misses) == (4, 1)


def test_config_refusals_are_sentences():
    for kwargs, text in (({"max_batch": 0}, "--max-batch must be a number of at least 1"),
                         ({"port": 70000}, "--port must be a number of at least 0 and at most 65535"),
                         ({"replicas": 2}, "--replicas needs --ray"),
                         ({"ray": True, "workers": 2}, "with --ray use --replicas N"),
                         ({"cache": "memcached://x"}, "--cache must be 'lru' or a Redis URL")):
        with pytest.raises(UserError, match=re.escape(text)):
            ServeConfig(**kwargs).check()


def test_protocol_refusals():
    cases = [
        (lambda: parse_json(b"{bad"), 400, "not valid JSON"),
        (lambda: parse_json(b"  "), 400, "body is empty"),
        (lambda: parse_json(b"\xff\xfe{"), 400, "not UTF-8"),
        (lambda: parse_segments([], 4, 10), 422, "must be a JSON object"),
        (lambda: parse_segments({"segment": ["a"]}, 4, 10), 422, "unknown field 'segment'"),
        (lambda: parse_segments({}, 4, 10), 422, "has no \"segments\""),
        (lambda: parse_segments({"segments": "abc"}, 4, 10), 422, "must be a list of strings, got a string"),
        (lambda: parse_segments({"segments": []}, 4, 10), 422, "is empty"),
        (lambda: parse_segments({"segments": ["a"] * 5}, 4, 10), 422, "5 segments, but the model takes at most 4"),
        (lambda: parse_segments({"segments": ["a", 3]}, 4, 10), 422, "segment 1 is a number, not a string"),
        (lambda: parse_segments({"segments": ["a", " "]}, 4, 10), 422, "segment 1 is empty"),
        (lambda: parse_segments({"segments": ["x" * 11]}, 4, 10), 422, "segment 0 has 11 characters"),
        (lambda: parse_batch({"requests": []}, 8, 4, 10), 422, "\"requests\" is empty"),
        (lambda: parse_batch({"requests": {}}, 8, 4, 10), 422, "must be a list of request objects"),
        (lambda: parse_batch({"requests": [{"segments": ["a"]}] * 9}, 8, 4, 10), 422, "at most 8"),
        (lambda: parse_batch({"requests": [{"segments": ["a"]}, {"segments": [1]}]}, 8, 4, 10), 422,
         "request 1: segment 0 is a number"),
    ]
    for call, status, text in cases:
        with pytest.raises(RequestError) as e:
            call()
        assert e.value.status == status and text in e.value.message, (text, e.value.message)
        assert e.value.message.endswith(".") and "\n" not in e.value.message
    assert parse_batch({"requests": [{"segments": ["a", "b"]}]}, 8, 4, 10) == [["a", "b"]]


def test_engine_encodes_each_distinct_miss_once():
    model = FakeModel()
    engine = SegmentEngine(model, LRUCache(1 << 20))
    first = engine.run([["ab", "c"], ["c", "ddd"]])
    assert model.encoded == ["ab", "c", "ddd"] and model.interact_calls == [2]
    assert [(p.hits, p.misses) for p in first] == [(0, 2), (0, 2)]
    assert np.allclose(first[0].logits, [2 * 3 * 2 + 1 * 3 * 1, 2])
    again = engine.run([["ddd", "ab"], ["e"]])
    assert model.encoded == ["ab", "c", "ddd", "e"] and engine.encoded_segments == 4
    assert [(p.hits, p.misses) for p in again] == [(2, 0), (0, 1)]
    assert np.allclose(again[0].logits, [3 * 3 * 3 + 2 * 3 * 2, 2])


# --------------------------------------------------------------------------------------------
# a real tiny late-interaction checkpoint behind real HTTP


@pytest.fixture(scope="module")
def li_checkpoint(tmp_path_factory, tiny_classifier):
    """The tiny classifier split at 2 late layers, with a random segment embedding, saved as a checkpoint."""
    import torch

    from edgekit.late_interaction import load_segment_model

    sm = load_segment_model(tiny_classifier, late_layers=2)
    with torch.no_grad():
        sm.model.segment_embedding.weight.normal_(0, 0.5)  # so that segment order matters
    out = tmp_path_factory.mktemp("li") / "model"
    sm.model.save_pretrained(out)
    sm.tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reference(li_checkpoint, single_torch_thread):
    from edgekit.late_interaction import load_segment_model

    return load_segment_model(li_checkpoint)


def expected(model, segments: list[str]) -> np.ndarray:
    return softmax(model.interact([model.encode_segments(segments)])[0])


REQUESTS = [["男性", "点击了 手机", "会点击 耳机 吗"], ["女性", "点击了 手机", "会点击 耳机 吗"], ["只有一段"]]


@pytest.fixture(scope="module")
def server(reference):
    with start_server(reference, ServeConfig(port=0, max_wait_ms=20)) as s:
        yield s


def test_http_answers_equal_the_model_and_hits_skip_encoding(server, reference):
    engine = server.server.engine
    before = engine.encoded_segments
    counts = lambda: [metric(http(server.url + "/metrics")[1], f"edgekit_segment_cache_{k}_total", backend="lru")  # noqa: E731
                      for k in ("hits", "misses")]
    hits_before, misses_before = counts()
    status, body = http(server.url + "/predict", {"segments": REQUESTS[0]})
    assert status == 200 and body["cache"] == {"hits": 0, "misses": 3}
    assert list(body["scores"]) == reference.labels
    assert np.allclose(list(body["scores"].values()), expected(reference, REQUESTS[0]), atol=1e-5)
    assert body["label"] == reference.labels[int(np.argmax(expected(reference, REQUESTS[0])))]
    assert engine.encoded_segments == before + 3
    status, body = http(server.url + "/predict", {"segments": REQUESTS[1]})
    assert status == 200 and body["cache"] == {"hits": 2, "misses": 1}     # only "女性" is new
    assert engine.encoded_segments == before + 4
    assert np.allclose(list(body["scores"].values()), expected(reference, REQUESTS[1]), atol=1e-5)
    status, body = http(server.url + "/predict/batch", {"requests": [{"segments": r} for r in REQUESTS]})
    assert status == 200 and [r["cache"] for r in body["results"]] == \
        [{"hits": 3, "misses": 0}, {"hits": 3, "misses": 0}, {"hits": 0, "misses": 1}]
    assert body["cache"] == {"hits": 6, "misses": 1}
    for r, segments in zip(body["results"], REQUESTS):
        assert np.allclose(list(r["scores"].values()), expected(reference, segments), atol=1e-5)
    assert engine.encoded_segments == before + 5
    hits, misses = counts()  # distinct segments per batch: 0+2+4 found, 3+1+1 not
    assert (hits - hits_before, misses - misses_before) == (6, 5)


def test_concurrent_requests_are_micro_batched(server, reference):
    text = lambda i: [f"用户 {i}", "点击了 手机"]  # noqa: E731
    before = metric(http(server.url + "/metrics")[1], "edgekit_batch_size_count")
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: http(server.url + "/predict", {"segments": text(i)}), range(12)))
    assert all(status == 200 for status, _ in answers)
    for i, (_, body) in enumerate(answers):
        assert np.allclose(list(body["scores"].values()), expected(reference, text(i)), atol=1e-5)
    batches = metric(http(server.url + "/metrics")[1], "edgekit_batch_size_count") - before
    assert 1 <= batches < 12  # 12 requests within 20 ms of each other share model calls


def test_bad_requests_are_4xx_sentences_and_the_server_goes_on(server):
    url = server.url
    cases = [
        (http(url + "/predict", b"{not json"), 400, "not valid JSON"),
        (http(url + "/predict", {"segments": "one string"}), 422, "must be a list of strings"),
        (http(url + "/predict", {"segments": []}), 422, "is empty"),
        (http(url + "/predict", {"segments": ["a"] * 17}), 422, "17 segments, but the model takes at most 16"),
        (http(url + "/predict", {"segments": ["字" * 2001]}), 422, "2001 characters"),
        (http(url + "/predict", {"segments": [None]}), 422, "segment 0 is null"),
        (http(url + "/predict/batch", {"requests": [{"segments": ["a"]}, "b"]}), 422, "request 1: the request must"),
        (http(url + "/nowhere", {"segments": ["a"]}), 404, "no endpoint /nowhere"),
        (http(url + "/predict"), 405, "GET is not allowed on /predict"),
    ]
    for (status, body), want_status, text in cases:
        assert status == want_status and text in body["error"], (want_status, body)
        assert body["error"].endswith(".") and "Traceback" not in body["error"]
    status, body = http(url + "/health")
    assert status == 200 and body["status"] == "ok" and body["cache"]["backend"] == "lru"
    metrics = http(url + "/metrics")[1]
    assert metric(metrics, "edgekit_requests_total", endpoint="/predict", status="422") >= 4
    assert metric(metrics, "edgekit_request_seconds_bucket", endpoint="/predict", le="+Inf") >= 1


def test_full_queue_answers_503_and_recovers():
    model = FakeModel(delay_s=0.3)
    with start_server(model, ServeConfig(port=0, max_batch=1, max_wait_ms=0, max_queue=2)) as s:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: http(s.url + "/predict", {"segments": [f"s{i}"]}), range(8)))
        statuses = sorted(status for status, _ in answers)
        assert statuses.count(200) >= 3 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}
        busy = next(body for status, body in answers if status == 503)
        assert "the server is busy (2 requests waiting, --max-queue); retry shortly." == busy["error"]
        model.delay_s = 0.0
        assert http(s.url + "/predict", {"segments": ["after"]})[0] == 200


class PickyModel(FakeModel):
    """Refuses (SegmentError) any request holding the segment "refuse"; raises a bug on "crash"."""

    def interact(self, requests):
        from edgekit_device.segments import SegmentError

        for r in requests:
            if any(p.shape[0] == 6 and p[0, 0] == 6 for p in r):  # "refuse" encodes to 6 rows of 6
                raise SegmentError("this model refuses that segment; send another.")
            if any(p[0, 0] == 5 for p in r):                       # "crash"
                raise RuntimeError("a bug")
        return super().interact(requests)


def test_one_refused_request_does_not_fail_its_batch():
    engine = SegmentEngine(PickyModel(), LRUCache(1 << 20))
    out = engine.run([["ok"], ["refuse"], ["fine"]])
    assert np.allclose(out[0].logits, [2 * 3 * 2, 1]) and np.allclose(out[2].logits, [4 * 3 * 4, 1])
    assert str(out[1]) == "this model refuses that segment; send another."


def test_a_model_bug_is_a_500_sentence_and_the_server_goes_on():
    with start_server(PickyModel(), ServeConfig(port=0, log_level="critical", max_body_bytes=100)) as s:
        big = b'{"segments": ["' + b"x" * 100 + b'"]}'
        assert http(s.url + "/predict", big) == \
            (413, {"error": "the request body has 118 bytes, more than the server's limit of 100; send fewer "
                            "segments or split the batch."})
        chunked = http(s.url + "/predict", iter([big[:50], big[50:]]),  # no Content-Length: counted while read
                       headers={"Content-Type": "application/json"})
        assert chunked == (413, {"error": "the request body is larger than the server's limit of 100 bytes; send "
                                          "fewer segments or split the batch."})
        assert http(s.url + "/predict", {"segments": ["crash"]}) == \
            (500, {"error": "internal error while answering; the server log has the details."})
        assert http(s.url + "/predict", {"segments": ["refuse"]}) == \
            (422, {"error": "this model refuses that segment; send another."})
        status, body = http(s.url + "/predict", {"segments": ["ok", "fine"]})
        assert status == 200 and body["logits"] == [2 * 3 * 2 + 4 * 3 * 4, 2]


def test_cli_refusals_are_one_sentence(tmp_path, li_checkpoint, capsys):
    from edgekit.cli import main

    def run(*args):
        with pytest.raises(SystemExit) as e:
            main(["serve", *map(str, args)])
        return e.value.code, capsys.readouterr().err.strip()

    code, err = run(tmp_path / "missing")
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "missing" in err
    code, err = run(li_checkpoint, "--cache", "memcached://x")
    assert code == 2 and "--cache must be 'lru' or a Redis URL" in err
    code, err = run(li_checkpoint, "--cache-bytes", "lots")
    assert code == 2 and "--cache-bytes must be a size" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, err = run(li_checkpoint, "--port", taken.getsockname()[1])
    assert code == 2 and "cannot listen on 127.0.0.1" in err and "choose another --port" in err


# --------------------------------------------------------------------------------------------
# Redis: shared by two processes, killed, restarted


class RedisServer:
    """Debian's redis-server on a loopback port, no persistence, in a temp dir."""

    def __init__(self, directory: Path, port: int):
        self.directory, self.port, self.proc = directory, port, None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing; .ci/run installs Debian's redis-server package")
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
    r = RedisServer(tmp_path_factory.mktemp("redis"), free_port()).start()
    yield r
    if r.proc.poll() is None:
        r.kill()


@pytest.mark.slow  # the second process imports torch and loads the model: ~10-20 s on a shared 2-core machine
def test_two_server_processes_share_one_redis(redis_server, li_checkpoint, reference):
    config = ServeConfig(port=0, cache=redis_server.url)
    segments = ["共享 缓存", "第二 段"]
    with start_server(reference, config) as first:
        status, body = http(first.url + "/predict", {"segments": segments})
        assert status == 200 and body["cache"] == {"hits": 0, "misses": 2}
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(li_checkpoint), "--port", str(port),
                             "--cache", redis_server.url, "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                status, health = http(url + "/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the second server did not start"
                time.sleep(0.2)
        assert health["pid"] == proc.pid and health["cache"] == {"backend": "redis", "url": redis_server.url,
                                                                 "up": True}
        status, body = http(url + "/predict", {"segments": segments})
        assert status == 200 and body["cache"] == {"hits": 2, "misses": 0}   # encoded by the other process
        assert np.allclose(list(body["scores"].values()), expected(reference, segments), atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_redis_killed_then_back(redis_server, reference, caplog):
    config = ServeConfig(port=0, cache=redis_server.url, redis_retry_max_s=0.2)
    caplog.set_level(logging.WARNING, logger="edgekit.serve")
    with start_server(reference, config) as s:
        engine = s.server.engine
        assert http(s.url + "/predict", {"segments": ["宕机 之前"]})[0] == 200
        redis_server.kill()
        for i in range(3):
            segments = ["宕机 之前", f"宕机 期间 {i}"]
            status, body = http(s.url + "/predict", {"segments": segments})
            assert status == 200 and body["cache"] == {"hits": 0, "misses": 2}
            assert np.allclose(list(body["scores"].values()), expected(reference, segments), atol=1e-5)
            time.sleep(0.25)  # past the backoff: each request tries Redis again, and fails
        metrics = http(s.url + "/metrics")[1]
        assert metric(metrics, "edgekit_segment_cache_errors_total", backend="redis") >= 3
        assert metric(metrics, "edgekit_segment_cache_up", backend="redis") == 0
        assert http(s.url + "/health")[1]["cache"]["up"] is False
        outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage) == 1  # once per outage, not once per request

        redis_server.start()  # same port, empty
        time.sleep(0.3)
        first = http(s.url + "/predict", {"segments": ["恢复 之后"]})[1]
        encoded = engine.encoded_segments
        second = http(s.url + "/predict", {"segments": ["恢复 之后"]})[1]
        assert first["cache"] == {"hits": 0, "misses": 1} and second["cache"] == {"hits": 1, "misses": 0}
        assert engine.encoded_segments == encoded
        metrics = http(s.url + "/metrics")[1]
        assert metric(metrics, "edgekit_segment_cache_up", backend="redis") == 1
        assert any("reachable again" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# an exported bundle: served without torch


NO_TORCH_SERVER = """
import json, sys, urllib.request
sys.modules["torch"] = None  # importing torch now fails: the bundle path must not need it
from edgekit.serve import ServeConfig, start_server
with start_server(sys.argv[1], ServeConfig(port=0, log_level="warning")) as s:
    answers = [json.loads(urllib.request.urlopen(s.url + "/predict", data=json.dumps({"segments": r}).encode()).read())
               for r in json.loads(sys.argv[2])]
print(json.dumps(answers))
"""


@pytest.mark.slow  # the ONNX export of the two halves: ~10 s
def test_serves_an_exported_bundle_without_torch(li_checkpoint, reference, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import app

    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(app, ["export", str(li_checkpoint), "--out", str(bundle)])
    assert result.exit_code == 0, result.output
    done = subprocess.run([sys.executable, "-c", NO_TORCH_SERVER, str(bundle), json.dumps(REQUESTS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert [a["cache"] for a in answers] == [{"hits": 0, "misses": 3}, {"hits": 2, "misses": 1},
                                             {"hits": 0, "misses": 1}]
    for a, segments in zip(answers, REQUESTS):
        assert np.allclose(list(a["scores"].values()), expected(reference, segments), atol=1e-4)
