import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from edgekit.distill.adapters import QKVRecorder, adapter_for
from edgekit.errors import UserError
from edgekit.student import StudentConfig, build_student


def test_bert_layer_qkv_equals_the_layer_projections():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                 intermediate_size=32)).eval()
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        rec = QKVRecorder(model, [2])
        with rec:
            model(ids, attention_mask=mask)
    attn = model.encoder.layer[1].attention.self
    q, k, v = rec.qkv(2)
    assert torch.allclose(q, attn.query(hidden[1]), atol=1e-6)
    assert torch.allclose(v, attn.value(hidden[1]), atol=1e-6)
    assert q.shape == (2, 6, 16)


def test_teacher_forward_stops_after_the_wanted_layer():
    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                 intermediate_size=32)).eval()
    calls = []
    model.encoder.layer[3].register_forward_hook(lambda *a: calls.append(1))
    rec = QKVRecorder(model, [2], stop_after_last=True)
    with torch.no_grad(), rec:
        model(torch.randint(0, 50, (1, 5)))
    assert 2 in rec.layers and calls == []


def test_albert_shared_layer_is_read_per_call():
    student = build_student(StudentConfig(num_layers=3, num_heads=2, hidden_size=16, embedding_size=8,
                                          intermediate_size=32), vocab_size=40).eval()
    rec = QKVRecorder(student, [1, 3])
    ids = torch.randint(0, 40, (2, 5))
    with torch.no_grad(), rec:
        out = student(ids, output_hidden_states=True)
    layer = student.encoder.albert_layer_groups[0].albert_layers[0]
    assert torch.allclose(rec.qkv(3)[1], layer.attention.key(out.hidden_states[2]), atol=1e-6)
    assert torch.allclose(rec.qkv(1)[0], layer.attention.query(out.hidden_states[0]), atol=1e-6)


def test_unsupported_architecture_names_the_supported_ones():
    gpt2 = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UserError, match=r"architecture 'gpt2' is not supported.*supported: albert, bert"):
        adapter_for(gpt2.config)
