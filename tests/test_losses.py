import math

import pytest
import torch

from edgekit.distill.losses import (default_relation_heads, minilmv1_loss, minilmv2_loss, relation_kl,
                                    relation_log_probs)


def _hand_kl():
    # Teacher X = [[1], [0]] -> X Xᵀ = [[1, 0], [0, 0]]; row 0 softmax = [e/(e+1), 1/(e+1)], row 1 = [1/2, 1/2].
    # Student X = [[0], [0]] -> every row [1/2, 1/2].
    # KL row 0 = p ln(2p) + q ln(2q) with p = e/(e+1), q = 1/(e+1); KL row 1 = 0; mean over 2 rows.
    p, q = math.e / (math.e + 1), 1 / (math.e + 1)
    return (p * math.log(2 * p) + q * math.log(2 * q)) / 2


def test_relation_kl_matches_hand_computation():
    t = torch.tensor([[[1.0], [0.0]]])
    s = torch.zeros(1, 2, 1)
    loss = relation_kl(relation_log_probs(t, t, 1, None), relation_log_probs(s, s, 1, None), None)
    assert loss.item() == pytest.approx(_hand_kl(), abs=1e-6)
    assert loss.item() == pytest.approx(0.0554720, abs=1e-6)


def test_padding_is_masked_out_of_keys_and_queries():
    # A third, padded token with a huge value must change nothing.
    t = torch.tensor([[[1.0], [0.0], [5.0]]])
    s = torch.tensor([[[0.0], [0.0], [-3.0]]])
    mask = torch.tensor([[1, 1, 0]])
    loss = relation_kl(relation_log_probs(t, t, 1, mask), relation_log_probs(s, s, 1, mask), mask)
    assert loss.item() == pytest.approx(_hand_kl(), abs=1e-6)


def test_minilmv2_is_sum_over_q_k_v_and_zero_for_identical_relations():
    torch.manual_seed(0)
    qkv = [torch.randn(2, 5, 8) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert minilmv2_loss(qkv, qkv, mask, 4).item() == pytest.approx(0.0, abs=1e-6)
    student = [torch.randn(2, 5, 12) for _ in range(3)]  # a different hidden size: relations still compare
    total = minilmv2_loss(qkv, student, mask, 4)
    parts = sum(relation_kl(relation_log_probs(t, t, 4, mask), relation_log_probs(s, s, 4, mask), mask)
                for t, s in zip(qkv, student))
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)
    assert total.item() > 0


def test_minilmv1_attention_plus_value_relation():
    torch.manual_seed(1)
    t = [torch.randn(1, 4, 8) for _ in range(3)]
    s = [torch.randn(1, 4, 8) for _ in range(3)]
    expected = (relation_kl(relation_log_probs(t[0], t[1], 2, None), relation_log_probs(s[0], s[1], 2, None), None)
                + relation_kl(relation_log_probs(t[2], t[2], 2, None), relation_log_probs(s[2], s[2], 2, None), None))
    assert minilmv1_loss(t, s, None, 2).item() == pytest.approx(expected.item(), rel=1e-6)
    assert minilmv1_loss(t, t, None, 2).item() == pytest.approx(0.0, abs=1e-6)


def test_default_relation_heads_divides_both_hidden_sizes():
    assert default_relation_heads(384, 12, 768, 16) == 16
    assert default_relation_heads(1024, 16, 768, 12) == 16
    r = default_relation_heads(384, 12, 312, 12)
    assert 384 % r == 0 and 312 % r == 0
