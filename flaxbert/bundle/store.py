"""What every bundle shares: the Bundle record and its parameter store (Orbax).

Bundles are written with `new_directory` / `replacing_directory` (flaxbert.output_dir, kept
free of flax so the serving export can use them too): into a unique temporary sibling, renamed
into place when whole, so nothing a user has is ever lost.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from flaxbert.data.tokenizer import Tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.output_dir import (new_directory, recover_replaced,  # re-exported
                                 replacing_directory)

FORMAT = "flaxbert-bundle"
FORMAT_VERSION = 1
SETTINGS_FILE = "finetune.json"   # a fine-tuned bundle's task settings, beside config.json


@dataclasses.dataclass
class Bundle:
  """A loaded model. Unpacks as `model, params, tokenizer = flaxbert.load(path)`."""

  model: nn.Module
  params: Any
  tokenizer: Tokenizer
  config: Any            # BertConfig or EncDecConfig
  head: str
  labels: list[str] | None = None
  # How sentence embeddings are pooled by default ({"pooling", "normalize", "max_length"}),
  # as a sentence-transformers checkpoint declares it (bundle/bert.py); None: no default.
  sentence_embedding: dict | None = None
  # The fine-tune's task settings (SETTINGS_FILE: max_seq_length, qa's n_best...) that
  # `flaxbert predict` reads, so that a serving export can carry them; None: not fine-tuned.
  task_settings: dict | None = None

  def __iter__(self):
    return iter((self.model, self.params, self.tokenizer))


def this_process_only():
  """Orbax options for a save or restore done by this process alone (bundles are written by
  one process; Orbax's default would wait for every process of a multi-host job)."""
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"bundle{me}")


def save_params(path: str, params) -> None:
  """Writes host (numpy) parameters; multi-host callers gather them first."""
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=this_process_only())
  checkpointer.save(os.path.abspath(path), jax.tree.map(np.asarray, params))
  checkpointer.wait_until_finished()
  checkpointer.close()


def restore_params(path: str, abstract_params):
  """Restores into the shapes/dtypes of `abstract_params`; a mismatch is a one-line error."""
  if not os.path.isdir(path):
    raise FlaxbertError(f"{path}: no such parameter checkpoint")
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=this_process_only())
  try:
    stored = checkpointer.metadata(os.path.abspath(path))
    stored_tree = getattr(stored, "item_metadata", stored)
    check_tree(stored_tree, abstract_params, path)
    return checkpointer.restore(os.path.abspath(path), abstract_params)
  except FlaxbertError:
    raise
  except OSError as e:
    raise FlaxbertError(f"{getattr(e, 'filename', None) or path}: {e.strerror or e}") from None
  except (ValueError, KeyError) as e:
    raise FlaxbertError(f"{path}: cannot restore parameters ({str(e).splitlines()[0]})") \
        from None
  finally:
    checkpointer.close()


def check_tree(stored, want, source: str, path: str = "") -> None:
  """Same keys and shapes in `stored` (metadata or arrays) as in `want`; else one line."""
  if isinstance(want, dict):
    stored_keys = set(stored) if hasattr(stored, "keys") else set()
    if stored_keys != set(want):
      raise FlaxbertError(f"{source}: parameters under '{path or '/'}' are "
                          f"{sorted(stored_keys)}, the config implies {sorted(want)}")
    for key in want:
      check_tree(stored[key], want[key], source, f"{path}/{key}" if path else key)
  elif tuple(stored.shape) != tuple(want.shape):
    raise FlaxbertError(f"{source}: {path} has shape {tuple(stored.shape)} but the config "
                        f"implies {tuple(want.shape)}")
