"""The zlib streams of a pack: the smallest of deflate's strategies, still a plain zlib stream."""

from __future__ import annotations

import importlib
import zlib

import numpy as np

pack_module = importlib.import_module("edgekit_device.pack")  # the package re-exports pack() under that name


def _mask_bytes(n=400_000, density=0.2, seed=0) -> bytes:
    return np.packbits(np.random.default_rng(seed).random(n) < density).tobytes()


def test_masks_compress_near_their_entropy_with_huffman_only():
    data = _mask_bytes()
    blob = pack_module._compress(data, "zlib")
    assert zlib.decompress(blob) == data  # any zlib reader (Java's Inflater, DecompressionStream) decodes it
    default = zlib.compress(data, 9)
    p = 0.2
    entropy_bytes = 400_000 * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8
    # level 9's LZ77 pass costs ~7% here; Huffman alone is within ~2% of the entropy
    assert len(blob) < 0.96 * len(default)
    assert len(blob) < 1.03 * entropy_bytes


def test_text_keeps_lz77():
    text = b"".join(b'{"piece": "%d", "score": -%d.25}, ' % (i % 97, i % 13) for i in range(5000))
    blob = pack_module._compress(text, "zlib")
    assert zlib.decompress(blob) == text
    assert len(blob) <= len(zlib.compress(text, 9))
    assert len(blob) < len(text) / 10  # repetitive text still gets matches, not Huffman alone
