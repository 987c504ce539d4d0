import pytest

import jax

import flaxbert
from flaxbert.models.config import BertConfig, get_config
from flaxbert.models.factory import build_model, init_params, param_count


def count(name, head="pretraining"):
  model = build_model(flaxbert.PRESETS[name], head)
  return param_count(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))


def test_preset_shapes_and_parameter_counts():
  base, large = flaxbert.PRESETS["bert_12_768_12"], flaxbert.PRESETS["bert_24_1024_16"]
  assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size) == \
      (12, 768, 12, 3072)
  assert (large.num_layers, large.hidden_size, large.num_heads, large.intermediate_size) == \
      (24, 1024, 16, 4096)
  # Published: BERT-base 110M, BERT-large 340M (with the pretraining heads).
  assert 109e6 < count("bert_12_768_12") < 111e6
  assert 108e6 < count("bert_12_768_12", "encoder") < 110e6
  assert 334e6 < count("bert_24_1024_16") < 341e6
  assert count("tiny") < 5e6


def test_hf_config_round_trip():
  config = BertConfig(vocab_size=1000, hidden_size=96, num_layers=3, num_heads=4,
                      intermediate_size=200, max_position_embeddings=64,
                      hidden_act="gelu_new", layer_norm_eps=1e-7)
  assert BertConfig.from_hf(config.to_hf()) == config
  assert config.to_hf()["num_hidden_layers"] == 3


@pytest.mark.parametrize("changes,message", [
    (dict(hidden_size=100, num_heads=3), "not divisible"),
    (dict(num_layers=0), "num_layers"),
    (dict(hidden_act="swish"), "hidden_act"),
    (dict(dtype="int8"), "dtype"),
    (dict(hidden_dropout=1.5), "hidden_dropout"),
])
def test_bad_config_is_a_clear_error(changes, message):
  with pytest.raises(flaxbert.FlaxbertError, match=message):
    flaxbert.PRESETS["tiny"].replace(**changes)


def test_unknown_names_are_errors(tmp_path):
  with pytest.raises(flaxbert.FlaxbertError, match="unknown config"):
    get_config("bert_13_769_11")
  with pytest.raises(flaxbert.FlaxbertError, match="unknown field"):
    flaxbert.PRESETS["tiny"].replace(hiden_size=3)
  bad = tmp_path / "config.json"
  bad.write_text('{"model_type": "roberta"}')
  with pytest.raises(flaxbert.FlaxbertError, match="not a BERT"):
    get_config(str(bad))
