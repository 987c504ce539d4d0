"""The bundle: the one unit every flaxbert command reads and writes.

    BUNDLE/config.json   {"format": "flaxbert-bundle", "model": "bert", "config": {...},
                          "head": "...", "num_labels": N, "labels": [...]}
    BUNDLE/tokenizer/    the tokenizer directory (spm.model or vocab.txt + its config)
    BUNDLE/params/       an Orbax checkpoint of the parameter tree

`load` also accepts an HF BERT checkpoint directory and imports it on the fly, so every command
that takes a bundle takes an HF model too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from flaxbert.data.tokenizer import Tokenizer, load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.interop import hf
from flaxbert.jsonfile import read_json, write_json
from flaxbert.models.config import BertConfig
from flaxbert.models.factory import build_model, init_params

log = logging.getLogger("flaxbert")

FORMAT = "flaxbert-bundle"
FORMAT_VERSION = 1


@dataclasses.dataclass
class Bundle:
  """A loaded model. Unpacks as `model, params, tokenizer = flaxbert.load(path)`."""

  model: nn.Module
  params: Any
  tokenizer: Tokenizer
  config: BertConfig
  head: str
  labels: list[str] | None = None

  def __iter__(self):
    return iter((self.model, self.params, self.tokenizer))


@contextlib.contextmanager
def new_directory(directory: str):
  """Yields a temporary sibling of `directory` to fill, then renames it into place, so a
  failure or a kill never leaves a half-written output. Refuses a non-empty `directory`."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory):
    raise FlaxbertError(f"{directory}: already exists and is not empty; choose a new --out")
  tmp = directory + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  yield tmp
  if os.path.isdir(directory):
    os.rmdir(directory)  # empty, checked above
  os.replace(tmp, directory)


def save(directory: str, bundle: Bundle) -> None:
  """Writes a bundle into a new directory, atomically."""
  with new_directory(directory) as tmp:
    bundle.tokenizer.save(os.path.join(tmp, "tokenizer"))
    save_params(os.path.join(tmp, "params"), bundle.params)
    write_json(os.path.join(tmp, "config.json"), {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": "bert",
        "config": bundle.config.to_dict(), "head": bundle.head,
        "num_labels": getattr(bundle.model, "num_labels", None), "labels": bundle.labels})


def _this_process_only():
  """Orbax options for a save or restore done by this process alone (bundles are written by
  one process; Orbax's default would wait for every process of a multi-host job)."""
  import orbax.checkpoint as ocp
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"bundle{me}")


def save_params(path: str, params) -> None:
  """Writes host (numpy) parameters; multi-host callers gather them first."""
  import orbax.checkpoint as ocp
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
  checkpointer.save(os.path.abspath(path), jax.tree.map(np.asarray, params))
  checkpointer.wait_until_finished()
  checkpointer.close()


def restore_params(path: str, abstract_params):
  """Restores into the shapes/dtypes of `abstract_params`; a mismatch is a one-line error."""
  import orbax.checkpoint as ocp
  if not os.path.isdir(path):
    raise FlaxbertError(f"{path}: no such parameter checkpoint")
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
  try:
    stored = checkpointer.metadata(os.path.abspath(path))
    stored_tree = getattr(stored, "item_metadata", stored)
    _check_tree(stored_tree, abstract_params, path)
    return checkpointer.restore(os.path.abspath(path), abstract_params)
  except FlaxbertError:
    raise
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise FlaxbertError(f"{path}: cannot restore parameters ({str(e).splitlines()[0]})") \
        from None
  finally:
    checkpointer.close()


def _check_tree(stored, want, source: str, path: str = "") -> None:
  if isinstance(want, dict):
    stored_keys = set(stored) if hasattr(stored, "keys") else set()
    if stored_keys != set(want):
      raise FlaxbertError(f"{source}: parameters under '{path or '/'}' are "
                          f"{sorted(stored_keys)}, the config implies {sorted(want)}")
    for key in want:
      _check_tree(stored[key], want[key], source, f"{path}/{key}" if path else key)
  elif tuple(stored.shape) != tuple(want.shape):
    raise FlaxbertError(f"{source}: {path} has shape {tuple(stored.shape)} but the config "
                        f"implies {tuple(want.shape)}")


def load(path: str, *, head: str | None = None, num_labels: int | None = None,
         labels: list[str] | None = None, seed: int = 0) -> Bundle:
  """Loads a bundle or an HF BERT directory, optionally re-headed.

  With `head` different from the stored one (say a pretrained bundle loaded for
  classification), the encoder weights are kept and the new head is freshly initialised,
  with one log line naming what was initialised.
  """
  if not os.path.isdir(path):
    raise FlaxbertError(f"{path}: no such bundle or checkpoint directory")
  config_path = os.path.join(path, "config.json")
  meta = read_json(config_path)
  if meta.get("format") == FORMAT and meta.get("model", "bert") == "encdec":
    from flaxbert.interop import encdec_bundle
    return encdec_bundle.load_bundle(path, meta)   # one head (seq2seq): nothing to re-head
  if meta.get("format") == FORMAT:
    bundle = _load_bundle(path, meta)
  elif "model_type" in meta:
    bundle = import_hf(path)
  else:
    raise FlaxbertError(f"{config_path}: neither a flaxbert bundle nor an HF BERT config")
  if head is not None and (head != bundle.head or (num_labels and num_labels != getattr(
      bundle.model, "num_labels", None))):
    bundle = rehead(bundle, head, num_labels, labels, seed)
  return bundle


def _load_bundle(path: str, meta: dict) -> Bundle:
  config = BertConfig.from_dict(meta.get("config") or {})
  head = meta.get("head", "encoder")
  model = build_model(config, head, meta.get("num_labels"))
  abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  params = restore_params(os.path.join(path, "params"), abstract)
  tokenizer = load_tokenizer(os.path.join(path, "tokenizer"))
  _check_vocab(config, tokenizer, path)
  return Bundle(model, params, tokenizer, config, head, meta.get("labels"))


def import_hf(directory: str, seed: int = 0) -> Bundle:
  """An HF BERT checkpoint directory as a Bundle; heads it lacks are initialised fresh."""
  hf_config = read_json(os.path.join(directory, "config.json"))
  config = BertConfig.from_hf(hf_config)
  sd, source = hf.read_state_dict(directory)
  head = hf.head_of_hf_checkpoint(hf_config, sd)
  labels = hf.hf_labels(hf_config, sd)
  model = build_model(config, head, len(labels) if labels else None)
  fresh = init_params(model, jax.random.key(seed))
  params, missing = hf.params_from_hf(sd, config, head, jax.tree.map(np.asarray, fresh), source)
  if missing:
    log.warning("flaxbert: %s has no %s head weights; initialised fresh: %s", source, head,
                ", ".join(missing))
  tokenizer = load_tokenizer(directory)
  _check_vocab(config, tokenizer, directory)
  return Bundle(model, params, tokenizer, config, head, labels)


def rehead(bundle: Bundle, head: str, num_labels: int | None, labels: list[str] | None,
           seed: int = 0) -> Bundle:
  model = build_model(bundle.config, head, num_labels)
  params = dict(init_params(model, jax.random.key(seed)))
  params["bert"] = bundle.params["bert"]
  fresh = sorted(k for k in params if k != "bert")
  if fresh:
    log.warning("flaxbert: new %s head initialised fresh: %s", head, ", ".join(fresh))
  return Bundle(model, params, bundle.tokenizer, bundle.config, head, labels)


def _check_vocab(config: BertConfig, tokenizer: Tokenizer, source: str) -> None:
  if tokenizer.vocab_size > config.vocab_size:
    raise FlaxbertError(f"{source}: tokenizer has {tokenizer.vocab_size} tokens but the model's "
                        f"vocab_size is {config.vocab_size}")


def export_hf(bundle: Bundle, directory: str) -> None:
  """Writes the bundle as an HF BERT checkpoint directory (config, safetensors, tokenizer)."""
  with new_directory(directory) as tmp:
    hf.write_hf_checkpoint(tmp, bundle.params, bundle.config, bundle.head, bundle.labels)
    bundle.tokenizer.save(tmp)
  if bundle.tokenizer.kind != "wordpiece":
    log.warning("flaxbert: the tokenizer is %s; transformers' BertTokenizer cannot read it, "
                "load %s/spm.model with sentencepiece", bundle.tokenizer.kind, directory)
