"""Length-bucketed batching for inference: sort rows by length, pad each batch only to the
smallest bucket length that holds it, run, and put the outputs back in input order.

Padding every batch to the longest row wastes most of the compute on short texts; padding to
the exact batch maximum would compile a new function for every length. A few bucket lengths
(powers of two up to the maximum) bound the number of compiled shapes, and `CompiledCache`
keeps one compiled function per (batch, bucket) shape across batches and calls.

Rows never interact in the model (attention is masked per row), so the outputs equal those of
the unbucketed path.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

# Sequence inputs of BERT-style models and the value their padding takes (mask 0 = padding).
DEFAULT_PAD = {"input_ids": 0, "segment_ids": 0, "input_mask": 0}


def default_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
  """Powers of two from `smallest` below `max_length`, then `max_length` itself."""
  buckets, length = [], smallest
  while length < max_length:
    buckets.append(length)
    length *= 2
  return tuple(buckets) + (max_length,)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  for bucket in sorted(buckets):
    if length <= bucket:
      return bucket
  raise ValueError(f"a row of {length} tokens is longer than the largest bucket "
                   f"{max(buckets)}")


class CompiledCache:
  """`jax.jit(fn)` compiled ahead of time once per input shape signature and reused.

  (jit's own cache does the same; this one makes the compiled shapes explicit: `shapes`
  lists them, so callers and tests can see how many compilations a run needed.)

  `fn(*args, batch)`: `args` (say the model parameters) are placed on the device once and
  passed to the compiled function as arguments. A function that closes over its parameters
  instead compiles them in as constants: XLA then folds through the whole model (a compile
  of MiniLM takes ~2 s instead of ~1 s), and every persistent-cache entry of it holds a copy
  of the weights (~90 MB for MiniLM, hashed and read back on every run).
  """

  def __init__(self, fn: Callable, *args):
    self._jitted = jax.jit(fn)
    self._args = jax.device_put(args)
    self._compiled: dict = {}

  @property
  def shapes(self) -> list:
    return list(self._compiled)

  def __call__(self, batch):
    """`batch`: a dict of arrays, or any pytree of them (compiled once per its structure,
    shapes and dtypes)."""
    leaves, structure = jax.tree.flatten(batch)
    key = (structure, tuple((tuple(np.shape(x)), str(np.asarray(x).dtype)) for x in leaves))
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self._compiled[key] = self._jitted.lower(*self._args, batch).compile()
    return compiled(*self._args, batch)


def row_lengths(rows: Sequence[dict], length_key: str = "input_ids") -> np.ndarray:
  return np.array([len(row[length_key]) for row in rows], np.int64)


def run_bucketed(fn: Callable[[dict], dict], rows: Sequence[dict], batch_size: int,
                 buckets: Sequence[int], *, per_token: Sequence[str] = (),
                 pad_values: dict | None = None, length_key: str = "input_ids",
                 progress: Callable[[int], None] | None = None) -> dict[str, list]:
  """Runs `fn` over `rows` in length-sorted, bucket-padded batches.

  rows: one dict per example of 1-d arrays of that example's length (say input_ids,
    segment_ids, input_mask, unpadded).
  fn: a dict of [batch_size, bucket] arrays -> a dict of arrays with a leading batch axis
    (a `CompiledCache`, a jitted function, or an exported function's `call`). Every call
    gets exactly `batch_size` rows: a short last batch is filled with copies of its first row
    (real data, so no all-padding row can produce NaNs), whose outputs are dropped.
  per_token: outputs whose axis 1 is the sequence axis; each row's slice is cut to its own
    length. Other outputs are returned per row as they are.
  pad_values: padding value per input name (default 0 for every input).
  progress: called with the number of rows finished after each batch.

  Returns {output name: [one array per row, in input order]}.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if not rows:
    return {}
  pad_values = {**DEFAULT_PAD, **(pad_values or {})}
  lengths = row_lengths(rows, length_key)
  # Stable sort, so equal-length rows keep their relative order (deterministic batches).
  order = np.argsort(lengths, kind="stable")
  results: dict[str, list] = {}
  for start in range(0, len(order), batch_size):
    members = order[start:start + batch_size]
    bucket = bucket_for(int(lengths[members].max()), buckets)
    filled = list(members) + [members[0]] * (batch_size - len(members))
    batch = {}
    for name in rows[members[0]]:
      column = np.full((batch_size, bucket), pad_values.get(name, 0),
                       np.asarray(rows[members[0]][name]).dtype)
      for slot, index in enumerate(filled):
        value = rows[index][name]
        column[slot, :len(value)] = value
      batch[name] = column
    outputs = fn(batch)
    for name, value in outputs.items():
      value = np.asarray(value)
      column = results.setdefault(name, [None] * len(rows))
      for slot, index in enumerate(members):
        column[index] = value[slot, :lengths[index]] if name in per_token else value[slot]
    if progress is not None:
      progress(len(members))
  return results


def unpadded_rows(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
  """Padded N x S model inputs (those of DEFAULT_PAD) as N rows cut at each row's mask."""
  lengths = arrays["input_mask"].sum(axis=1)
  return [{k: arrays[k][i, :n] for k in DEFAULT_PAD} for i, n in enumerate(lengths)]


def stack_outputs(out: dict[str, list], per_token: Sequence[str], width: int
                  ) -> dict[str, np.ndarray]:
  """`run_bucketed`'s per-row outputs as N x ... arrays, the per-token ones padded back to
  N x `width` (zeros past each row's length)."""
  return {k: stack_padded(v, width) if k in per_token else np.stack(v) for k, v in out.items()}


def stack_padded(arrays: Sequence[np.ndarray], length: int | None = None,
                 fill=0) -> np.ndarray:
  """Per-row arrays of different lengths (axis 0) as one [rows, length, ...] array."""
  length = max(len(a) for a in arrays) if length is None else length
  first = np.asarray(arrays[0])
  out = np.full((len(arrays), length) + first.shape[1:], fill, first.dtype)
  for i, a in enumerate(arrays):
    out[i, :len(a)] = a
  return out

