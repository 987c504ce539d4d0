"""Bundles of the encoder-decoder: the same layout as BERT bundles with "model": "encdec".

    BUNDLE/config.json   {"format": "flaxbert-bundle", "model": "encdec", "config": {...},
                          "head": "seq2seq", ...}
    BUNDLE/tokenizer/    BUNDLE/params/ (Orbax)

`flaxbert.bundle.load` dispatches here on the "model" field.
"""

from __future__ import annotations

import os

import jax

from flaxbert.bundle.store import FORMAT, FORMAT_VERSION, Bundle, restore_params, save_params
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import write_json
from flaxbert.models.encdec import EncDecModel, init_params
from flaxbert.models.encdec_config import EncDecConfig

MODEL = "encdec"
HEAD = "seq2seq"


def write_encdec(directory: str, bundle: Bundle, extra: dict | None = None) -> None:
  """Fills `directory` (new, empty) with the encoder-decoder bundle's files."""
  bundle.tokenizer.save(os.path.join(directory, "tokenizer"))
  save_params(os.path.join(directory, "params"), bundle.params)
  write_json(os.path.join(directory, "config.json"), {
      "format": FORMAT, "format_version": FORMAT_VERSION, "model": MODEL,
      "config": bundle.config.to_dict(), "head": HEAD, "num_labels": None, "labels": None,
      **(extra or {})})


def load_encdec(path: str, meta: dict) -> Bundle:
  config = EncDecConfig.from_dict(meta.get("config") or {})
  model = EncDecModel(config)
  abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  params = restore_params(os.path.join(path, "params"), abstract)
  tokenizer = load_tokenizer(os.path.join(path, "tokenizer"))
  if tokenizer.vocab_size > config.vocab_size:
    raise FlaxbertError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model's "
                        f"vocab_size is {config.vocab_size}")
  return Bundle(model, params, tokenizer, config, HEAD, None)
