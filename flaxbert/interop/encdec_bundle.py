"""Bundles of the encoder-decoder: the same layout as BERT bundles with "model": "encdec".

    BUNDLE/config.json   {"format": "flaxbert-bundle", "model": "encdec", "config": {...},
                          "head": "seq2seq", ...}
    BUNDLE/tokenizer/    BUNDLE/params/ (Orbax)

`flaxbert.interop.bundle.load` dispatches here on the "model" field.
"""

from __future__ import annotations

import os
import shutil

import jax

from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.interop import bundle as bundle_lib
from flaxbert.jsonfile import write_json
from flaxbert.models.encdec import EncDecModel, init_params
from flaxbert.models.encdec_config import EncDecConfig

MODEL = "encdec"
HEAD = "seq2seq"


def save(directory: str, bundle: bundle_lib.Bundle, extra: dict | None = None) -> None:
  """Writes an encoder-decoder bundle into a new directory, atomically."""
  with bundle_lib.new_directory(directory) as tmp:
    bundle.tokenizer.save(os.path.join(tmp, "tokenizer"))
    bundle_lib.save_params(os.path.join(tmp, "params"), bundle.params)
    write_json(os.path.join(tmp, "config.json"), {
        "format": bundle_lib.FORMAT, "format_version": bundle_lib.FORMAT_VERSION,
        "model": MODEL, "config": bundle.config.to_dict(), "head": HEAD, "num_labels": None,
        "labels": None, **(extra or {})})


def replace(directory: str, bundle: bundle_lib.Bundle, extra: dict | None = None) -> None:
  """Writes the bundle to `directory`, replacing what is there only once the new one is whole
  (the best-dev bundle, rewritten on each improvement)."""
  new = os.path.abspath(directory) + ".new"
  shutil.rmtree(new, ignore_errors=True)
  save(new, bundle, extra)
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(new, directory)


def load_bundle(path: str, meta: dict) -> bundle_lib.Bundle:
  config = EncDecConfig.from_dict(meta.get("config") or {})
  model = EncDecModel(config)
  abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  params = bundle_lib.restore_params(os.path.join(path, "params"), abstract)
  tokenizer = load_tokenizer(os.path.join(path, "tokenizer"))
  if tokenizer.vocab_size > config.vocab_size:
    raise FlaxbertError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model's "
                        f"vocab_size is {config.vocab_size}")
  return bundle_lib.Bundle(model, params, tokenizer, config, HEAD, None)


def load(path: str) -> bundle_lib.Bundle:
  """An encoder-decoder bundle; anything else is a one-line error."""
  bundle = bundle_lib.load(path)
  if not isinstance(bundle.config, EncDecConfig):
    raise FlaxbertError(f"{path}: a {bundle.head} BERT bundle, not an encoder-decoder one")
  return bundle
