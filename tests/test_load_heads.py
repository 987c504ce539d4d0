"""`flaxbert.load(path, head=, num_labels=, labels=)`: a new head on a stored encoder."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import flaxbert


def test_load_with_a_new_classification_head(tiny_hf):
  model, params, tokenizer = flaxbert.load(tiny_hf, head="classification", num_labels=3,
                                           seed=1)
  assert model.num_labels == 3 and "classifier" in params and "mlm" not in params
  # The encoder is the checkpoint's, the head new.
  stored = safetensors.numpy.load_file(os.path.join(tiny_hf, "model.safetensors"))
  np.testing.assert_array_equal(params["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                stored["bert.embeddings.word_embeddings.weight"])
  ids, segments = tokenizer.build_inputs(tokenizer.encode("a b c"), tokenizer.encode("d e"))
  out = model.apply({"params": params}, jnp.asarray([ids, ids]), jnp.asarray([segments] * 2))
  assert out["logits"].shape == (2, 3) and np.all(np.isfinite(out["logits"]))

  named = flaxbert.load(tiny_hf, head="classification", labels=["neg", "neu", "pos"], seed=1)
  assert named.labels == ["neg", "neu", "pos"] and named.model.num_labels == 3
  np.testing.assert_array_equal(named.params["classifier"]["dense"]["kernel"],
                                params["classifier"]["dense"]["kernel"])   # same seed
  with pytest.raises(flaxbert.FlaxbertError, match="num_labels=2 but 3 labels"):
    flaxbert.load(tiny_hf, head="classification", num_labels=2, labels=["a", "b", "c"])
  with pytest.raises(flaxbert.FlaxbertError, match="pass head= too"):
    flaxbert.load(tiny_hf, num_labels=3)
