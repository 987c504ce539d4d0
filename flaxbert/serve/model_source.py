"""What `flaxbert serve` serves: a serving export as it is, or a bundle through its export.

A bundle (or HF BERT checkpoint) is exported with `export_serving` into a private temporary
directory, loaded, and the directory removed at once (the loaded model holds everything in
memory), so a bundle and its export answer alike and nothing is left behind, even after a
kill; `int8` applies to that export.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from flaxbert import bundle as bundle_lib
from flaxbert.errors import FlaxbertError
from flaxbert.inference.serving import ServingModel, export_serving, load
from flaxbert.inference.serving_manifest import MANIFEST_FILE
from flaxbert.serve.answers import HEADS


def open_model(path: str, *, int8: bool = False) -> ServingModel:
  """A serving export directory loaded, or a bundle (or HF BERT checkpoint) exported and
  loaded."""
  if not os.path.isdir(path):
    raise FlaxbertError(f"{path}: no such serving export or bundle directory")
  if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
    if int8:
      raise FlaxbertError(f"{path}: a serving export is served as exported; --int8 applies "
                          "to a bundle (or export it with `flaxbert export --serving --int8`)")
    return load(path)
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FlaxbertError(f"{path}: neither a serving export ({MANIFEST_FILE}) nor a bundle "
                        "(config.json)")
  bundle = bundle_lib.load(path)
  if bundle.head not in HEADS:
    raise FlaxbertError(f"{path}: cannot serve a {bundle.head!r} bundle (served heads: "
                        f"{', '.join(HEADS)})")
  scratch = tempfile.mkdtemp(prefix="flaxbert-serve-")
  try:
    export_serving(bundle, os.path.join(scratch, "export"), int8=int8)
    return load(os.path.join(scratch, "export"))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
