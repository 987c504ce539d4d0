"""Bundles: the artefact every flaxbert command reads and writes, for every kind of model.

    BUNDLE/config.json   {"format": "flaxbert-bundle", "model": "bert" | "encdec", ...}
    BUNDLE/tokenizer/    BUNDLE/params/ (Orbax)

`load` dispatches on the bundle's model kind (and imports HF BERT directories on the fly);
`save` writes a new bundle, `replace` rewrites one a run owns, both atomically.
"""

from __future__ import annotations

import os

from flaxbert.bundle.bert import export_hf, import_hf, load_bert, rehead, write_bert
from flaxbert.bundle.encdec import load_encdec, write_encdec
from flaxbert.bundle.store import (FORMAT, FORMAT_VERSION, SETTINGS_FILE, Bundle,
                                   new_directory, replacing_directory, restore_params,
                                   save_params)
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, write_json
from flaxbert.models.encdec_config import EncDecConfig


def model_kind(bundle: Bundle) -> str:
  return "encdec" if isinstance(bundle.config, EncDecConfig) else "bert"


def _write(directory: str, bundle: Bundle, extra: dict | None,
           files: dict[str, dict] | None = None) -> None:
  if model_kind(bundle) == "encdec":
    write_encdec(directory, bundle, extra)
  else:
    write_bert(directory, bundle)
  for name, content in (files or {}).items():   # e.g. the task settings predict reads
    write_json(os.path.join(directory, name), content)


def save(directory: str, bundle: Bundle, extra: dict | None = None) -> None:
  """Writes a bundle into a new (absent or empty) directory, atomically."""
  with new_directory(directory) as tmp:
    _write(tmp, bundle, extra)


def replace(directory: str, bundle: Bundle, extra: dict | None = None,
            files: dict[str, dict] | None = None) -> None:
  """Writes the bundle to `directory`, replacing what is there only once the new one is whole
  (a run's `best/` and `bundle/`); `files` are more JSON files to put in it."""
  with replacing_directory(directory) as tmp:
    _write(tmp, bundle, extra, files)


def load(path: str, *, head: str | None = None, num_labels: int | None = None,
         labels: list[str] | None = None, seed: int = 0) -> Bundle:
  """Loads a bundle (BERT or encoder-decoder) or an HF BERT directory.

  A BERT model loaded with `head` different from the stored one keeps its encoder weights and
  gets a fresh head (one log line names it). A fine-tuned bundle loaded with its own head
  brings its finetune.json as `task_settings`."""
  if not os.path.isdir(path):
    raise FlaxbertError(f"{path}: no such bundle or checkpoint directory")
  meta = read_json(os.path.join(path, "config.json"))
  if meta.get("format") == FORMAT and meta.get("model", "bert") == "encdec":
    return load_encdec(path, meta)   # one head (seq2seq): nothing to re-head
  bundle = load_bert(path, meta, head=head, num_labels=num_labels, labels=labels, seed=seed)
  settings = os.path.join(path, SETTINGS_FILE)
  if bundle.head == meta.get("head") and os.path.isfile(settings):   # not re-headed
    bundle.task_settings = read_json(settings)
  return bundle


def load_encdec_bundle(path: str) -> Bundle:
  """An encoder-decoder bundle; anything else is a one-line error."""
  bundle = load(path)
  if model_kind(bundle) != "encdec":
    raise FlaxbertError(f"{path}: a {bundle.head} BERT bundle, not an encoder-decoder one")
  return bundle


__all__ = ["Bundle", "FORMAT", "FORMAT_VERSION", "SETTINGS_FILE", "export_hf", "import_hf", "load",
           "load_encdec_bundle", "model_kind", "new_directory", "rehead", "replace",
           "replacing_directory", "restore_params", "save", "save_params"]
