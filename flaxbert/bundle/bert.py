"""BERT bundles: the one unit every flaxbert command reads and writes.

    BUNDLE/config.json   {"format": "flaxbert-bundle", "model": "bert", "config": {...},
                          "head": "...", "num_labels": N, "labels": [...]}
    BUNDLE/tokenizer/    the tokenizer directory (spm.model, or tokenizer.json + vocab.txt,
                         and its tokenizer_config.json)
    BUNDLE/params/       an Orbax checkpoint of the parameter tree

`load_bert` also accepts an HF BERT checkpoint directory and imports it on the fly, so every
command that takes a bundle takes an HF model too. `flaxbert.bundle.load` dispatches here.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

from flaxbert.bundle import hf
from flaxbert.bundle.store import (FORMAT, FORMAT_VERSION, Bundle, new_directory,
                                   restore_params, save_params)
from flaxbert.data.tokenizer import Tokenizer, load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import load_json, read_json, write_json
from flaxbert.models.config import BertConfig
from flaxbert.models.factory import build_model, init_params

log = logging.getLogger("flaxbert")

MODEL = "bert"


def write_bert(directory: str, bundle: Bundle) -> None:
  """Fills `directory` (new, empty) with the bundle's files."""
  bundle.tokenizer.save(os.path.join(directory, "tokenizer"))
  save_params(os.path.join(directory, "params"), bundle.params)
  write_json(os.path.join(directory, "config.json"), {
      "format": FORMAT, "format_version": FORMAT_VERSION, "model": MODEL,
      "config": bundle.config.to_dict(), "head": bundle.head,
      "num_labels": getattr(bundle.model, "num_labels", None), "labels": bundle.labels,
      **sentence_embedding_meta(bundle)})


def load_bert(path: str, meta: dict, *, head: str | None = None, num_labels: int | None = None,
              labels: list[str] | None = None, seed: int = 0) -> Bundle:
  """Loads a bundle or an HF BERT directory, optionally re-headed.

  With `head` different from the stored one (say a pretrained bundle loaded for
  classification), the encoder weights are kept and the new head is freshly initialised,
  with one log line naming what was initialised.
  """
  if meta.get("format") == FORMAT:
    bundle = _load_bundle(path, meta)
  elif "model_type" in meta:
    bundle = import_hf(path)
  else:
    config_of(path, meta)   # neither a bundle nor an HF checkpoint: its one-line error
  if head is not None and (head != bundle.head or (num_labels and num_labels != getattr(
      bundle.model, "num_labels", None))):
    bundle = rehead(bundle, head, num_labels, labels, seed)
  return bundle


def config_of(path: str, meta: dict) -> BertConfig:
  """The BERT config that `path`'s config.json (its content: `meta`) declares, a flaxbert
  bundle's or an HF checkpoint's, without reading any weights."""
  if meta.get("format") == FORMAT:
    return BertConfig.from_dict(meta.get("config") or {})
  if "model_type" in meta:
    return BertConfig.from_hf(meta)
  raise FlaxbertError(f"{os.path.join(path, 'config.json')}: neither a flaxbert bundle nor an "
                      "HF BERT config")


def _load_bundle(path: str, meta: dict) -> Bundle:
  config = config_of(path, meta)
  head = meta.get("head", "encoder")
  model = build_model(config, head, meta.get("num_labels"))
  params = restore_params(os.path.join(path, "params"), abstract_params(model))
  tokenizer = load_tokenizer(os.path.join(path, "tokenizer"))
  _check_vocab(config, tokenizer, path)
  return Bundle(model, params, tokenizer, config, head, meta.get("labels"),
                meta.get("sentence_embedding"))


def import_hf(directory: str, seed: int = 0) -> Bundle:
  """An HF BERT checkpoint directory as a Bundle; heads it lacks are initialised fresh."""
  hf_config = read_json(os.path.join(directory, "config.json"))
  config = config_of(directory, hf_config)
  tokenizer = load_tokenizer(directory)
  _check_vocab(config, tokenizer, directory)
  sd, source = hf.read_state_dict(directory)
  head = hf.head_of_hf_checkpoint(hf_config, sd)
  labels = hf.hf_labels(hf_config, sd)
  model = build_model(config, head, len(labels) if labels else None)
  params, missing = hf.params_from_hf(sd, config, head, abstract_params(model), source)
  for path, value in zip(missing, fresh_groups(model, missing, seed)):
    _put(params, path, value)
  named = hf.uninitialised_heads(missing, head)
  if named:
    log.warning("flaxbert: %s has no %s head weights; initialised fresh: %s", source, head,
                ", ".join(named))
  return Bundle(model, params, tokenizer, config, head, labels,
                sentence_transformers_embedding(directory))


def rehead(bundle: Bundle, head: str, num_labels: int | None, labels: list[str] | None,
           seed: int = 0) -> Bundle:
  model = build_model(bundle.config, head, num_labels)
  fresh = sorted(k for k in abstract_params(model) if k != "bert")
  params = {"bert": bundle.params["bert"]}
  params.update(zip(fresh, fresh_groups(model, [(k,) for k in fresh], seed)))
  if fresh:
    log.warning("flaxbert: new %s head initialised fresh: %s", head, ", ".join(fresh))
  # dataclasses.replace keeps what the bundle carries besides its head (its pooling default).
  return dataclasses.replace(bundle, model=model, params=params, head=head, labels=labels)


def abstract_params(model, seed: int = 0) -> dict:
  """The model's parameter tree as shapes and dtypes, computing nothing."""
  return jax.eval_shape(lambda: init_params(model, jax.random.key(seed)))


def fresh_groups(model, paths: list[tuple[str, ...]], seed: int = 0) -> list:
  """Initial values (numpy) of the parameter groups at `paths` only, as `init_params` with
  this seed draws them: one jitted init whose other outputs XLA drops as dead code, so the
  weights a checkpoint supplies cost neither random numbers nor the many small compilations
  an eager init runs (~8 s for MiniLM on CPU)."""
  if not paths:
    return []

  def init(key):
    params = init_params(model, key)
    return [_get(params, path) for path in paths]

  return jax.tree.map(np.asarray, jax.jit(init)(jax.random.key(seed)))


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _put(tree: dict, path: tuple[str, ...], value) -> None:
  _get(tree, path[:-1])[path[-1]] = value


def _check_vocab(config: BertConfig, tokenizer: Tokenizer, source: str) -> None:
  if tokenizer.vocab_size > config.vocab_size:
    raise FlaxbertError(f"{source}: tokenizer has {tokenizer.vocab_size} tokens but the model's "
                        f"vocab_size is {config.vocab_size}")


def export_hf(bundle: Bundle, directory: str) -> None:
  """Writes the bundle as an HF BERT checkpoint directory: config.json, model.safetensors and
  the tokenizer's files (for WordPiece: vocab.txt, tokenizer.json and a tokenizer_config.json
  that transformers 4.x and 5.x both read)."""
  with new_directory(directory) as tmp:
    hf.write_hf_checkpoint(tmp, bundle.params, bundle.config, bundle.head, bundle.labels)
    bundle.tokenizer.save(tmp)
    tokenizer_config = os.path.join(tmp, "tokenizer_config.json")
    if bundle.tokenizer.kind == "wordpiece":
      # The longest input the model takes: transformers truncates and warns by it.
      write_json(tokenizer_config, {**read_json(tokenizer_config),
                                    "model_max_length": bundle.config.max_position_embeddings})
  if bundle.tokenizer.kind != "wordpiece":
    log.warning("flaxbert: the tokenizer is %s; transformers' BertTokenizer cannot read it, "
                "load %s/spm.model with sentencepiece", bundle.tokenizer.kind, directory)


# --- sentence-transformers checkpoints: their pooling becomes `flaxbert embed`'s default ----

# Pooling/config.json keys -> flaxbert's names (embed implements cls, mean and max; the others
# are recorded so that embed can say which one a checkpoint wants).
ST_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_max_tokens": "max",
                    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                    "pooling_mode_weightedmean_tokens": "weightedmean",
                    "pooling_mode_lasttoken": "lasttoken"}
ST_APPLIED = ("Transformer", "Pooling", "Normalize")


def sentence_transformers_embedding(directory: str) -> dict | None:
  """What a sentence-transformers checkpoint's `modules.json` declares after the encoder:
  {"pooling": "mean" (several modes joined by "+"; None without a Pooling module),
  "normalize": a Normalize module follows, "max_length": sentence_bert_config.json's
  max_seq_length or None}; None for a plain HF directory (no modules.json)."""
  path = os.path.join(directory, "modules.json")
  if not os.path.isfile(path):
    return None
  modules = load_json(path)
  if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
    raise FlaxbertError(f"{path}: expected a JSON list of modules")
  kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
  if any(kind not in ST_APPLIED for kind in kinds):
    log.warning("flaxbert: %s: sentence-transformers modules %s are not applied by embed",
                path, ", ".join(k for k in kinds if k not in ST_APPLIED))
  pooling = None
  for module, kind in zip(modules, kinds):
    if kind == "Pooling":
      config = read_json(os.path.join(directory, str(module.get("path", "")), "config.json"))
      pooling = "+".join(name for key, name in ST_POOLING_MODES.items() if config.get(key))
  settings_path = os.path.join(directory, "sentence_bert_config.json")
  settings = read_json(settings_path) if os.path.isfile(settings_path) else {}
  max_length = settings.get("max_seq_length")
  return {"pooling": pooling or None, "normalize": "Normalize" in kinds,
          "max_length": max_length if isinstance(max_length, int) else None}


def sentence_embedding_meta(bundle: Bundle) -> dict:
  """The bundle config.json entry that keeps a sentence-transformers pooling default."""
  return {"sentence_embedding": bundle.sentence_embedding} if bundle.sentence_embedding else {}
