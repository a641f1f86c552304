"""``edgekit serve``: a late-interaction model behind HTTP (M6-Rec section 3.3; issue #14).

Entry point ``serve(model, config)`` (blocks; what the CLI calls); ``start_server`` runs it in a
thread for scripts and tests; ``make_app`` returns the ASGI app itself. ``model`` is a
``SegmentModel`` (``edgekit_device.segments``) or a path: a late-interaction checkpoint (PyTorch)
or an exported bundle (ONNX Runtime, no torch).

Modules: ``config.py`` (``ServeConfig``), ``protocol.py`` (request parsing and answers, pure),
``cache.py`` (segment keys, the no-pickle array format, the byte-bounded LRU, the Redis cache and
its outage handling), ``engine.py`` (one micro-batch through cache and model; the micro-batcher),
``metrics.py`` (Prometheus), ``app.py`` (Starlette routes), ``stage.py`` (uvicorn),
``ray_app.py`` (Ray Serve replicas, the ``serve`` extra).

Python API::

    from edgekit.serve import ServeConfig, start_server
    import json, urllib.request
    with start_server("runs/li/model", ServeConfig(port=0, cache="redis://127.0.0.1:6379/0")) as s:
        body = json.dumps({"segments": ["男性", "点击了 X", "会点击 Z 吗"]}).encode()
        print(urllib.request.urlopen(s.url + "/predict", data=body).read())
"""

from edgekit.serve.app import Server, make_app
from edgekit.serve.cache import LRUCache, RedisCache, decode_array, encode_array, make_cache, segment_key
from edgekit.serve.config import ServeConfig
from edgekit.serve.engine import MicroBatcher, SegmentEngine, softmax
from edgekit.serve.stage import RunningServer, serve, start_server

__all__ = ["LRUCache", "MicroBatcher", "RedisCache", "RunningServer", "SegmentEngine", "ServeConfig", "Server",
           "decode_array", "encode_array", "make_app", "make_cache", "segment_key", "serve", "softmax",
           "start_server"]
