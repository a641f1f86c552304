import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AlbertForSequenceClassification, AlbertModel

from edgekit.early_exit import (
    EarlyExitClassifier,
    encode_to_layer,
    exit_weights,
    prediction_entropy,
    weighted_exit_loss,
)
from edgekit.errors import UserError
from edgekit.student import StudentConfig, build_student

TINY = StudentConfig(num_layers=4, num_heads=2, hidden_size=32, embedding_size=16, intermediate_size=64)
VOCAB = 100
LENGTHS = [12, 5, 9, 3, 12, 7, 4, 10]


def padded_batch(seed=0, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (len(lengths), max(lengths)), generator=g)
    attention_mask = torch.ones_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, length:] = 0
        attention_mask[row, length:] = 0
    token_type_ids = (torch.arange(max(lengths)) >= 2).long().expand_as(input_ids).clone()
    return input_ids, attention_mask, token_type_ids


@pytest.fixture(scope="module")
def student():
    return build_student(TINY, VOCAB, pooler=True, seed=0).eval()


@pytest.fixture(scope="module")
def classifier():
    """A classifier whose predictions change across layers, so exits differ between examples."""
    torch.manual_seed(3)
    clf = EarlyExitClassifier.from_student(build_student(TINY, VOCAB, pooler=True, seed=3), num_labels=3).eval()
    with torch.no_grad():
        for module in clf.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 0.4)
    return clf


# --- the paper's math -----------------------------------------------------------------------


def test_exit_weights_by_hand():
    assert torch.allclose(exit_weights(4), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    w = exit_weights(24)  # L(L+1) = 600
    assert w.shape == (24,)
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    assert torch.isclose(w[0], torch.tensor(2 / 600))
    assert torch.isclose(w[11], torch.tensor(24 / 600))
    assert torch.isclose(w[23], torch.tensor(48 / 600))
    assert exit_weights(1).tolist() == [1.0]


def test_paper_denominator_is_a_typo():
    k = torch.arange(1, 5, dtype=torch.float64)
    assert not torch.isclose((2 * k / (k * (k + 1))).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_weighted_exit_loss_by_hand():
    # 0.1*1 + 0.2*2 + 0.3*3 + 0.4*4 = 3.0
    assert torch.isclose(weighted_exit_loss(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor(3.0))
    # 1/3*0.5 + 2/3*2.0 = 1.5
    losses = [torch.tensor(0.5, requires_grad=True), torch.tensor(2.0, requires_grad=True)]
    total = weighted_exit_loss(losses)
    assert torch.isclose(total, torch.tensor(1.5))
    total.backward()
    assert torch.isclose(losses[0].grad, torch.tensor(1 / 3))
    assert torch.isclose(losses[1].grad, torch.tensor(2 / 3))


def test_prediction_entropy_by_hand():
    assert torch.isclose(prediction_entropy(torch.tensor([3.0, 3.0])), torch.log(torch.tensor(2.0)))
    assert prediction_entropy(torch.tensor([[100.0, 0.0, 0.0]]))[0] < 1e-6


# --- running k layers -----------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_encode_to_layer_matches_full_model(student, attn):
    model = copy.deepcopy(student)
    model.set_attn_implementation(attn)
    input_ids, attention_mask, token_type_ids = padded_batch()
    with torch.no_grad():
        full = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     output_hidden_states=True).hidden_states
        for k in range(1, TINY.num_layers + 1):
            states = encode_to_layer(model, input_ids, attention_mask, token_type_ids, exit_layer=k)
            assert len(states) == k
            for layer, state in enumerate(states, start=1):
                assert torch.allclose(state, full[layer], atol=1e-6)


def test_encode_to_layer_matches_a_model_of_depth_k(student):
    input_ids, attention_mask, _ = padded_batch(seed=1)
    for k in range(1, TINY.num_layers + 1):
        config = copy.deepcopy(student.config)
        config.num_hidden_layers = k
        shallow = AlbertModel(config).eval()
        shallow.load_state_dict(student.state_dict())
        with torch.no_grad():
            expected = shallow(input_ids, attention_mask=attention_mask).last_hidden_state
            got = encode_to_layer(student, input_ids, attention_mask, exit_layer=k)[-1]
        assert torch.allclose(got, expected, atol=1e-6)


def test_layers_above_the_exit_are_not_computed(student):
    calls = []
    shared = student.encoder.albert_layer_groups[0].albert_layers[0]
    handle = shared.register_forward_hook(lambda *_: calls.append(1))
    try:
        input_ids, attention_mask, _ = padded_batch()
        for k in range(1, TINY.num_layers + 1):
            calls.clear()
            with torch.no_grad():
                encode_to_layer(student, input_ids, attention_mask, exit_layer=k)
            assert len(calls) == k
    finally:
        handle.remove()


# --- the classifier -------------------------------------------------------------------------


def test_last_exit_is_the_hf_model(classifier):
    input_ids, attention_mask, token_type_ids = padded_batch()
    with torch.no_grad():
        out = classifier(input_ids, attention_mask, token_type_ids)
        hf = classifier.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
    assert out.logits.shape == (TINY.num_layers, len(LENGTHS), 3)
    assert torch.allclose(out.logits[-1], hf, atol=1e-6)
    for k in range(1, TINY.num_layers + 1):
        assert torch.equal(classifier.predict(input_ids, attention_mask, token_type_ids, exit_layer=k),
                           out.logits[k - 1].argmax(-1))
    assert classifier(input_ids, attention_mask, token_type_ids, exit_layer=2).logits.shape == (2, len(LENGTHS), 3)


def test_save_and_load_is_a_standard_checkpoint(classifier, tmp_path):
    classifier.save_pretrained(tmp_path)
    input_ids, attention_mask, _ = padded_batch()
    reloaded = AlbertForSequenceClassification.from_pretrained(tmp_path).eval()
    again = EarlyExitClassifier.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = classifier(input_ids, attention_mask).logits
        assert torch.allclose(again(input_ids, attention_mask).logits, expected, atol=1e-6)
        assert torch.allclose(reloaded(input_ids, attention_mask=attention_mask).logits, expected[-1], atol=1e-6)


def test_weighted_loss_trains_the_shared_layer(student):
    clf = EarlyExitClassifier.from_student(copy.deepcopy(student), num_labels=2).train()
    input_ids, attention_mask, _ = padded_batch()
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    out = clf(input_ids, attention_mask, labels=labels)
    by_hand = sum(w * F.cross_entropy(out.logits[k], labels) for k, w in enumerate([0.1, 0.2, 0.3, 0.4]))
    assert torch.isclose(out.loss, by_hand)
    assert torch.isclose(clf(input_ids, attention_mask, labels=labels, early_exit=False).loss,
                         F.cross_entropy(out.logits[-1], labels))

    shared = clf.model.albert.encoder.albert_layer_groups[0].albert_layers[0]
    before = {name: p.detach().clone() for name, p in shared.named_parameters()}
    optimizer = torch.optim.SGD(clf.parameters(), lr=0.1)
    out.loss.backward()
    for name, p in shared.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    optimizer.step()
    assert any(not torch.equal(p, before[name]) for name, p in shared.named_parameters())


# --- dynamic exit ---------------------------------------------------------------------------


def one_by_one(clf, input_ids, attention_mask, token_type_ids, **kwargs):
    preds, layers, logits = [], [], []
    for row in range(input_ids.shape[0]):
        length = int(attention_mask[row].sum())
        p, k, z = clf.predict_dynamic(input_ids[row:row + 1, :length], attention_mask[row:row + 1, :length],
                                      token_type_ids[row:row + 1, :length], **kwargs)
        preds.append(p)
        layers.append(k)
        logits.append(z)
    return torch.cat(preds), torch.cat(layers), torch.cat(logits)


@pytest.mark.parametrize("kwargs", [dict(mode="patience", patience=1), dict(mode="patience", patience=2),
                                    dict(mode="entropy", entropy_threshold=0.6)])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batched_dynamic_exit_equals_one_example_at_a_time(classifier, kwargs, attn):
    classifier = copy.deepcopy(classifier)
    classifier.model.set_attn_implementation(attn)
    input_ids, attention_mask, token_type_ids = padded_batch()
    preds, layers, logits = classifier.predict_dynamic(input_ids, attention_mask, token_type_ids, **kwargs)
    alone = one_by_one(classifier, input_ids, attention_mask, token_type_ids, **kwargs)
    assert len(set(layers.tolist())) > 1, "the fixture should make examples exit at different layers"
    assert torch.equal(preds, alone[0])
    assert torch.equal(layers, alone[1])
    assert torch.allclose(logits, alone[2], atol=1e-5)
    # the logits at the exit are that layer's logits of the fixed-depth forward pass
    with torch.no_grad():
        every_exit = classifier(input_ids, attention_mask, token_type_ids).logits
    assert torch.allclose(logits, every_exit[layers - 1, torch.arange(len(LENGTHS))], atol=1e-5)


def test_dynamic_exit_rules(classifier):
    input_ids, attention_mask, token_type_ids = padded_batch()
    with torch.no_grad():
        every_exit = classifier(input_ids, attention_mask, token_type_ids).logits
    predictions = every_exit.argmax(-1).T.tolist()  # (B, L)
    entropies = prediction_entropy(every_exit).T.tolist()
    _, patience2, _ = classifier.predict_dynamic(input_ids, attention_mask, token_type_ids, patience=2)
    _, entropy, _ = classifier.predict_dynamic(input_ids, attention_mask, token_type_ids, mode="entropy",
                                               entropy_threshold=0.6)
    for row in range(len(LENGTHS)):
        p, e = predictions[row], entropies[row]
        pabee = next((k for k in range(3, 5) if p[k - 3] == p[k - 2] == p[k - 1]), 4)
        deebert = next((k for k in range(1, 5) if e[k - 1] < 0.6), 4)
        assert patience2[row] == pabee
        assert entropy[row] == deebert
    _, capped, _ = classifier.predict_dynamic(input_ids, attention_mask, token_type_ids, patience=3, max_layer=2)
    assert capped.max() <= 2


def test_dynamic_exit_stops_computing_finished_examples(classifier):
    input_ids, attention_mask, token_type_ids = padded_batch()
    _, layers, _ = classifier.predict_dynamic(input_ids, attention_mask, token_type_ids, patience=1)
    rows_seen = []
    shared = classifier.model.albert.encoder.albert_layer_groups[0].albert_layers[0]
    handle = shared.register_forward_hook(lambda module, args, output: rows_seen.append(output.shape[0]))
    try:
        classifier.predict_dynamic(input_ids, attention_mask, token_type_ids, patience=1)
    finally:
        handle.remove()
    assert rows_seen == [int((layers >= k).sum()) for k in range(1, int(layers.max()) + 1)]


# --- user errors ----------------------------------------------------------------------------


def test_bad_inputs_raise_user_errors(student, classifier):
    input_ids, attention_mask, _ = padded_batch()
    for bad in (0, 5):
        with pytest.raises(UserError, match=r"exit_layer must be a layer between 1 and the model's depth 4"):
            encode_to_layer(student, input_ids, attention_mask, exit_layer=bad)
        with pytest.raises(UserError, match=r"depth 4, got %d; pick a layer in 1\.\.4" % bad):
            classifier.predict(input_ids, attention_mask, exit_layer=bad)
        with pytest.raises(UserError, match=r"max_layer must be a layer between 1 and the model's depth 4"):
            classifier.predict_dynamic(input_ids, attention_mask, max_layer=bad)
    with pytest.raises(UserError, match=r"exit_layer .* depth 4"):
        classifier(input_ids, attention_mask, exit_layer=7)
    with pytest.raises(UserError, match=r"patience must be an integer of at least 1, got 0"):
        classifier.predict_dynamic(input_ids, attention_mask, patience=0)
    with pytest.raises(UserError, match=r"entropy_threshold must be greater than 0, got 0"):
        classifier.predict_dynamic(input_ids, attention_mask, mode="entropy", entropy_threshold=0.0)
    with pytest.raises(UserError, match=r"mode must be 'patience' \(PABEE\) or 'entropy' \(DeeBERT\)"):
        classifier.predict_dynamic(input_ids, attention_mask, mode="confidence")
    with pytest.raises(UserError, match=r"attention_mask must have the shape of input_ids"):
        encode_to_layer(student, input_ids, attention_mask[:, :3])
    with pytest.raises(UserError, match=r"needs an ALBERT model, got Linear"):
        encode_to_layer(torch.nn.Linear(2, 2), input_ids, attention_mask)
    with pytest.raises(UserError, match=r"num_labels must be an integer of at least 2, got 1"):
        EarlyExitClassifier.from_student(student, num_labels=1)
    with pytest.raises(UserError, match=r"number of exits must be a positive integer, got 0"):
        exit_weights(0)
    with pytest.raises(UserError, match=r"labels must hold one class index per example"):
        classifier(input_ids, attention_mask, labels=torch.zeros(3, dtype=torch.long))
