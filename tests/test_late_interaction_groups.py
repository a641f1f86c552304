"""Segments encoded in length groups: the grouping by hand, and the outputs in the caller's order."""

from __future__ import annotations

import torch

from edgekit.late_interaction.model import length_groups


def test_length_groups_by_hand():
    # sorted 5, 7 | 12 > 2*5 -> new group | 180 > 2*12 -> new group
    assert length_groups([180, 5, 7, 12]) == [[1, 2], [3], [0]]
    assert length_groups([4, 8, 9]) == [[0, 1], [2]]  # 8 <= 2*4 joins; 9 > 8 starts a group
    assert length_groups([]) == []


def test_grouped_encoding_keeps_order_and_equals_one_at_a_time(tiny_classifier, single_torch_thread):
    from edgekit.late_interaction import load_segment_model

    sm = load_segment_model(tiny_classifier, late_layers=1)
    ids = [[2] + [7 + i % 30 for i in range(n)] + [3] for n in (40, 1, 3, 20, 2)]
    together = sm.model.encode_segment_ids(ids)
    assert [t.shape[0] for t in together] == [len(s) for s in ids]
    for tokens, got in zip(ids, together):
        alone = sm.model.encode_segment_ids([tokens])[0]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
