"""Int8 quantization of a model's parameters, for serving.

Every dense kernel (a "kernel" with a sibling "bias": fused QKV, attention output, FFN, pooler,
task heads) is stored as int8 with one float32 scale per output channel (symmetric:
w ~= q * scale, scale = max|w| over the kernel's input axes / 127), and every embedding table
(word, position, token type: an "embedding") as int8 with one scale per row. Biases and
LayerNorm parameters stay float32. The served function (flaxbert.inference.serving_function)
computes with the int8 arrays directly: int8 x int8 -> int32 matmuls on activations it
quantizes per token, int8 row gathers then scaling; `dequantize` gives the float values back.

Parameters here are flat dicts {"bert/encoder/layers/0/attention/qkv/kernel": array}; kernels
of a scanned "layers" module that are still stacked ("bert/encoder/layers/attention/...")
carry a leading layer axis, which keeps its own scales.
"""

from __future__ import annotations

import re

import numpy as np

SCALE_SUFFIX = ":scale"
INT8_MAX = 127


def flatten(tree, prefix: str = "") -> dict:
  """{"a/b/c": leaf} for a nested dict of arrays."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict) or hasattr(value, "items"):
      flat.update(flatten(value, path))
    else:
      flat[path] = value
  return flat


# A module under a scanned "layers" whose parameters are still stacked (no layer number next).
_STACKED_LAYERS = re.compile(r"(^|/)layers/(?!\d+/)")


def input_axes(path: str, kernel_ndim: int, bias_ndim: int) -> tuple[int, ...]:
  """The axes a dense kernel contracts over. A kernel is [layers?] + inputs + outputs and its
  bias [layers?] + outputs, so the number of input axes is the difference of their ranks."""
  lead = 1 if _STACKED_LAYERS.search(path) else 0
  return tuple(range(lead, lead + kernel_ndim - bias_ndim))


def dense_kernels(flat: dict) -> list[str]:
  return sorted(p for p in flat if p.endswith("/kernel") and p[:-len("kernel")] + "bias" in flat)


def embedding_tables(flat: dict) -> list[str]:
  return sorted(p for p in flat if p.endswith("/embedding") and np.ndim(flat[p]) == 2)


def quantize(flat: dict) -> dict:
  """Flat float parameters -> flat parameters with int8 dense kernels and embedding tables,
  each plus its ":scale" array."""
  out = {}
  kernels, tables = set(dense_kernels(flat)), set(embedding_tables(flat))
  for path, value in flat.items():
    value = np.asarray(value, np.float32)
    if path in kernels:
      bias = flat[path[:-len("kernel")] + "bias"]
      axes = input_axes(path, value.ndim, np.ndim(bias))
    elif path in tables:
      axes = (1,)     # one scale per row: a gathered row is scaled by its own
    else:
      out[path] = value
      continue
    scale = np.max(np.abs(value), axis=axes, keepdims=True) / INT8_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # an all-zero channel stays 0
    out[path] = np.clip(np.rint(value / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    out[path + SCALE_SUFFIX] = scale
  return out


def dequantize(flat: dict) -> dict:
  """The float32 values of a quantized flat dict (scales applied, ":scale" entries dropped);
  unquantized entries pass through."""
  out = {}
  for path, value in flat.items():
    if path.endswith(SCALE_SUFFIX):
      continue
    scale = flat.get(path + SCALE_SUFFIX)
    out[path] = value if scale is None else np.asarray(value, np.float32) * scale
  return out


def nbytes(flat: dict) -> int:
  return int(sum(np.asarray(v).nbytes for v in flat.values()))


def size_report(float_flat: dict, quantized_flat: dict) -> dict:
  """Parameter bytes before and after, and the share of parameters that became int8."""
  before, after = nbytes(float_flat), nbytes(quantized_flat)
  kernels, tables = dense_kernels(float_flat), embedding_tables(float_flat)
  quantized = sum(int(np.size(float_flat[p])) for p in kernels + tables)
  total = sum(int(np.size(v)) for v in float_flat.values())
  return {"float_bytes": before, "int8_bytes": after,
          "reduction": round(before / max(after, 1), 3),
          "int8_parameter_share": round(quantized / max(total, 1), 4),
          "quantized_kernels": len(kernels), "quantized_tables": len(tables)}
