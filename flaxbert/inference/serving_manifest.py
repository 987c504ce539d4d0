"""A serving export's manifest.json: what it must hold, and the checks that a directory is
exactly what `export_serving` wrote.

The manifest records, for every file of the export (model.stablehlo, params.npz, each file of
tokenizer/), its size in bytes and sha256, and `manifest_sha256`, the sha256 of the manifest's
own canonical JSON without that field, so an edit to labels, head or max_length is caught too.
`load` checks, in this order and each failure as one line naming the file: the manifest's
fields and types; its digest; every file's size (cheap, and names a truncated file), then its
sha256; then that params.npz holds exactly the arrays the exported function takes, and that the
manifest's inputs and outputs are the function's. The digests catch accidents and edits, not
an attacker, who could rewrite them all: treat an export from an untrusted source like code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import jax
import numpy as np

from flaxbert.errors import FlaxbertError

FORMAT = "flaxbert-serving"
FORMAT_VERSION = 3     # 2: files record {bytes, sha256}; the manifest carries its own digest
# 3: parameters one entry per encoder layer; int8 embedding tables and int8 activations
MODULE_FILE = "model.stablehlo"
ONNX_FILE = "model.onnx"     # optional: the same function for onnxruntime (`export --onnx`)
PARAMS_FILE = "params.npz"
MANIFEST_FILE = "manifest.json"
TOKENIZER_DIR = "tokenizer"
INPUTS = ("input_ids", "segment_ids", "input_mask")
DIGEST_FIELD = "manifest_sha256"

_SHA256 = re.compile(r"[0-9a-f]{64}")


# --- writing -------------------------------------------------------------------------------------

def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def export_files(directory: str) -> list[str]:
  """The files an export is made of, relative and '/'-separated: the module, the parameters,
  the ONNX model where there is one, and every file under tokenizer/."""
  names = [MODULE_FILE, PARAMS_FILE]
  if os.path.exists(os.path.join(directory, ONNX_FILE)):
    names.append(ONNX_FILE)
  for root, _, files in os.walk(os.path.join(directory, TOKENIZER_DIR)):
    for name in files:
      names.append(os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/"))
  return sorted(names)


def file_records(directory: str) -> dict[str, dict]:
  return {name: {"bytes": os.path.getsize(os.path.join(directory, name)),
                 "sha256": sha256_file(os.path.join(directory, name))}
          for name in export_files(directory)}


def manifest_digest(manifest: dict) -> str:
  """sha256 of the manifest's canonical JSON (sorted keys, no spaces), without the digest."""
  body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
  text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_inputs(exported) -> list[dict]:
  """The token inputs of the exported function, as the manifest records them."""
  (args, _) = jax.tree.unflatten(exported.in_tree, exported.in_avals)
  return [_describe(name, aval) for name, aval in zip(INPUTS, args[1:])]


def describe_outputs(exported) -> list[dict]:
  outputs = jax.tree.unflatten(exported.out_tree, exported.out_avals)
  return [_describe(name, aval) for name, aval in sorted(outputs.items())]


def _describe(name: str, aval) -> dict:
  return {"name": name, "dtype": str(aval.dtype), "shape": [str(d) for d in aval.shape]}


# --- checking ------------------------------------------------------------------------------------

def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _tensor_specs(value, field: str, problems: list[str]) -> None:
  if not isinstance(value, list) or not value:
    problems.append(f"{field}: expected a non-empty list of {{name, dtype, shape}}, "
                    f"got {value!r:.60}")
    return
  names = []
  for i, spec in enumerate(value):
    where = f"{field}[{i}]"
    if not isinstance(spec, dict):
      problems.append(f"{where}: expected an object {{name, dtype, shape}}, got {spec!r:.60}")
      continue
    for key in ("name", "dtype"):
      if not isinstance(spec.get(key), str) or not spec.get(key):
        problems.append(f"{where}.{key}: expected a string, got {spec.get(key)!r:.60}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, str) for d in shape):
      problems.append(f"{where}.shape: expected a list of dimension strings, got {shape!r:.60}")
    names.append(spec.get("name"))
  if len(set(map(str, names))) != len(names):
    problems.append(f"{field}: names repeat ({names})")


def _files(value, problems: list[str]) -> None:
  if not isinstance(value, dict):
    problems.append(f"files: expected an object {{file: {{bytes, sha256}}}}, got {value!r:.60}")
    return
  for name in (MODULE_FILE, PARAMS_FILE):
    if name not in value:
      problems.append(f"files: no record of {name}")
  for name, record in value.items():
    parts = name.split("/")
    if os.path.isabs(name) or "\\" in name or any(p in ("", ".", "..") for p in parts):
      problems.append(f"files: {name!r} is not a plain path inside the export")
    elif not (isinstance(record, dict) and _is_int(record.get("bytes"))
              and record["bytes"] >= 0 and isinstance(record.get("sha256"), str)
              and _SHA256.fullmatch(record["sha256"])):
      problems.append(f"files.{name}: expected {{bytes: a size, sha256: 64 hex digits}}, "
                      f"got {record!r:.80}")


def check_fields(manifest: dict, path: str) -> None:
  """Every field present with its type; all problems in one line."""
  if manifest.get("format") != FORMAT:
    raise FlaxbertError(f"{path}: not a flaxbert serving manifest (export one with "
                        "`flaxbert export BUNDLE --serving`)")
  if manifest.get("format_version") != FORMAT_VERSION:
    raise FlaxbertError(f"{path}: format_version {manifest.get('format_version')!r}; this "
                        f"flaxbert reads version {FORMAT_VERSION} (export the bundle again)")
  problems = []
  kinds = {"head": str, "compute_dtype": str, "jax_version": str, "int8": bool,
           "params": dict, DIGEST_FIELD: str}
  for field in ("head", "labels", "num_labels", "int8", "compute_dtype", "jax_version",
                "platforms", "max_length", "inputs", "outputs", "files", "params", DIGEST_FIELD):
    if field not in manifest:
      problems.append(f"{field}: missing")
    elif field in kinds and not isinstance(manifest[field], kinds[field]):
      problems.append(f"{field}: expected {kinds[field].__name__}, got "
                      f"{manifest[field]!r:.60}")
  value = manifest.get("max_length", 1)
  if not _is_int(value) or value <= 0:
    problems.append(f"max_length: expected a positive integer, got {value!r:.60}")
  labels = manifest.get("labels")
  if labels is not None and not (isinstance(labels, list)
                                 and all(isinstance(x, str) for x in labels)):
    problems.append(f"labels: expected a list of strings or null, got {labels!r:.60}")
  num_labels = manifest.get("num_labels")
  if num_labels is not None and not (_is_int(num_labels) and num_labels > 0):
    problems.append(f"num_labels: expected a positive integer or null, got {num_labels!r:.60}")
  elif isinstance(labels, list) and num_labels is not None and len(labels) != num_labels:
    problems.append(f"labels: {len(labels)} names for num_labels {num_labels}")
  platforms = manifest.get("platforms", [])
  if not (isinstance(platforms, list) and all(isinstance(x, str) for x in platforms)):
    problems.append(f"platforms: expected a list of strings, got {platforms!r:.60}")
  for field in ("inputs", "outputs"):
    if field in manifest:
      _tensor_specs(manifest[field], field, problems)
  if "files" in manifest:
    _files(manifest["files"], problems)
  digest = manifest.get(DIGEST_FIELD)
  if isinstance(digest, str) and not _SHA256.fullmatch(digest):
    problems.append(f"{DIGEST_FIELD}: expected 64 hex digits, got {digest!r:.80}")
  if problems:
    raise FlaxbertError(f"{path}: " + "; ".join(problems))
  if manifest_digest(manifest) != manifest[DIGEST_FIELD]:
    raise FlaxbertError(f"{path}: content differs from its {DIGEST_FIELD} (edited after "
                        "export); export the bundle again")


def check_files(directory: str, manifest: dict) -> None:
  """Every recorded file present with its size, then its sha256; no unrecorded tokenizer
  file (load_tokenizer would read it)."""
  records = manifest["files"]
  for name in export_files(directory):
    if (name.startswith(TOKENIZER_DIR + "/") or name == ONNX_FILE) and name not in records:
      raise FlaxbertError(f"{os.path.join(directory, name)}: not recorded in the manifest "
                          "(added after export)")
  for name, record in records.items():
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise FlaxbertError(f"{path}: missing from the serving directory")
    size = os.path.getsize(path)
    if size != record["bytes"]:
      raise FlaxbertError(f"{path}: {size} bytes, the manifest records {record['bytes']} "
                          "(truncated or replaced after export)")
  for name, record in records.items():
    path = os.path.join(directory, name)
    if sha256_file(path) != record["sha256"]:
      raise FlaxbertError(f"{path}: sha256 differs from the manifest's (changed after export)")


def check_params(arrays: dict[str, np.ndarray], exported, path: str) -> None:
  """params.npz holds exactly the arrays the exported function takes, shape and dtype."""
  (args, _) = jax.tree.unflatten(exported.in_tree, exported.in_avals)
  want = args[0]
  missing, extra = sorted(set(want) - set(arrays)), sorted(set(arrays) - set(want))
  if missing or extra:
    raise FlaxbertError(f"{path}: arrays differ from the exported function's parameters "
                        f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                        f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''})")
  for name in sorted(want):
    got, aval = arrays[name], want[name]
    if tuple(got.shape) != tuple(aval.shape) or got.dtype != aval.dtype:
      raise FlaxbertError(f"{path}: {name} is {got.dtype}{list(got.shape)} but the exported "
                          f"function takes {aval.dtype}{list(aval.shape)}")


def check_signature(manifest: dict, exported, path: str) -> None:
  """The manifest's inputs and outputs are the exported function's."""
  for field, actual in (("inputs", describe_inputs(exported)),
                        ("outputs", describe_outputs(exported))):
    if manifest[field] != actual:
      raise FlaxbertError(f"{path}: {field} {manifest[field]} differ from the exported "
                          f"function's {actual}")
