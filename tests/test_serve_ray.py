"""``edgekit serve --ray --replicas 2``: a local Ray instance, two replicas, one Redis cache (issue #14).

Slow (Ray starts its controller, proxy and two replica processes: ~30-60 s on two shared cores).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.serve import ServeConfig
from edgekit.serve.app import PID_HEADER
from tests.test_serve import expected, free_port, li_checkpoint, redis_server, reference  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def post(url, body):
    import json
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read()), int(r.headers[PID_HEADER])


def test_two_ray_replicas_share_the_redis_cache(li_checkpoint, redis_server, reference):  # noqa: F811
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'edgekit[serve]' "
                                            "(.ci/run installs it)")
    import ray

    from edgekit.serve.ray_app import deploy

    port = free_port()
    config = ServeConfig(port=port, ray=True, replicas=2, cache=redis_server.url, log_level="warning").check()
    ray_serve = deploy(li_checkpoint, config)
    try:
        url = f"http://127.0.0.1:{port}"
        first, first_pid = post(url + "/predict", {"segments": ["雷 共享", "第一 个"]})
        assert first["cache"] == {"hits": 0, "misses": 2}
        pids, other = {first_pid}, None
        for i in range(40):  # Ray routes between the replicas: find an answer from the other one
            body, pid = post(url + "/predict", {"segments": ["雷 共享", f"第 {i} 个"]})
            assert np.allclose(list(body["scores"].values()), expected(reference, ["雷 共享", f"第 {i} 个"]),
                               atol=1e-5)
            pids.add(pid)
            if pid != first_pid:
                other = body
                break
        assert len(pids) == 2, "all 41 requests went to one replica"
        assert other["cache"] == {"hits": 1, "misses": 1}  # "雷 共享" was encoded by the other replica
    finally:
        ray_serve.shutdown()
        ray.shutdown()
