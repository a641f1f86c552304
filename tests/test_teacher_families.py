"""The README's teacher families: a tiny random model of every family the adapter registry names,
built from its transformers config and saved with a tokenizer, distills through ``edgekit.distill``."""

import pytest

from conftest import VOCAB, tiny_distill_overrides
from edgekit.distill.adapters import ADAPTERS

SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 64}


def _config(family: str, vocab_size: int, pad: int):
    import transformers as tf

    common = {"vocab_size": vocab_size, "pad_token_id": pad}
    if family == "distilbert":
        return tf.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, **common)
    if family in ("albert", "electra"):
        common["embedding_size"] = 16  # both factorize the embeddings; exercise it
    classes = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig, "xlm-roberta": tf.XLMRobertaConfig,
               "camembert": tf.CamembertConfig, "electra": tf.ElectraConfig, "ernie": tf.ErnieConfig,
               "megatron-bert": tf.MegatronBertConfig, "albert": tf.AlbertConfig}
    return classes[family](**SHAPE, **common)


def make_family_teacher(family: str, path):
    """A randomly initialised ``family`` encoder with the bert-base-chinese WordPiece tokenizer (every
    family reads token ids; which tokenizer made them does not matter to distillation)."""
    import torch
    from transformers import AutoModel, BertTokenizer

    torch.manual_seed(0)
    tok = BertTokenizer.from_pretrained(VOCAB.parent)
    model = AutoModel.from_config(_config(family, len(tok), tok.pad_token_id))
    assert model.config.model_type == family
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_every_registered_family_is_tested():
    assert sorted(ADAPTERS) == sorted(["bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie",
                                       "megatron-bert", "albert", "distilbert"])


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(ADAPTERS))
def test_family_distills_two_steps(family, tiny_corpus, tmp_path, single_torch_thread):
    import math

    from edgekit.distill import distill, load_distill_config

    teacher = make_family_teacher(family, tmp_path / family)
    over = tiny_distill_overrides(teacher, tiny_corpus, max_steps=2, save_every=2)
    result = distill(load_distill_config(None, over), tmp_path / "run")
    assert result["steps"] == 2
    assert math.isfinite(result["final_metrics"]["loss"]) and result["final_metrics"]["loss"] > 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert result["teacher_layer"] == 2
