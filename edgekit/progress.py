"""Progress bars for long loops that are not training (evaluation, teacher logits): one helper, so every
such loop reports the same way (tqdm on stderr; training has its own bar in edgekit/train.py)."""
from __future__ import annotations


def batch_starts(n: int, batch_size: int, desc: str):
    """``range(0, n, batch_size)`` with a progress bar counting examples, e.g. ``eval iflytek: 640/2599``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc=desc, unit="ex", dynamic_ncols=True, mininterval=2.0)
    try:
        for start in range(0, n, batch_size):
            yield start
            bar.update(min(batch_size, n - start))
    finally:
        bar.close()
