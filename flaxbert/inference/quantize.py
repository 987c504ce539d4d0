"""Weight-only int8 quantization of the dense kernels, for serving.

Every dense kernel (a "kernel" with a sibling "bias": fused QKV, attention output, FFN, pooler,
task heads) is stored as int8 with one float32 scale per output channel (symmetric:
w ~= q * scale, scale = max|w| over the kernel's input axes / 127). Embedding tables, biases and
LayerNorm parameters stay float32: they are a small share of the compute, and the embedding
gather gains nothing from int8. Activations stay in the compute dtype; the served function
dequantizes the kernels itself (`dequantize`), so int8 is what is stored and shipped.

Parameters here are flat dicts {"bert/encoder/layers/attention/qkv/kernel": array}; kernels
under a scanned "layers" module carry a leading layer axis, which keeps its own scales.
"""

from __future__ import annotations

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


def unflatten(flat: dict) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def input_axes(path: str, kernel_ndim: int, bias_ndim: int) -> tuple[int, ...]:
  """The axes a dense kernel contracts over. A kernel is [layers?] + inputs + outputs and its
  bias [layers?] + outputs, so the number of input axes is the difference of their ranks."""
  lead = 1 if "/layers/" in f"/{path}" else 0
  return tuple(range(lead, lead + kernel_ndim - bias_ndim))


def dense_kernels(flat: dict) -> list[str]:
  return sorted(p for p in flat if p.endswith("/kernel") and p[:-len("kernel")] + "bias" in flat)


def quantize(flat: dict) -> dict:
  """Flat float parameters -> flat parameters with int8 dense kernels plus their scales."""
  out = {}
  kernels = set(dense_kernels(flat))
  for path, value in flat.items():
    value = np.asarray(value, np.float32)
    if path not in kernels:
      out[path] = value
      continue
    bias = flat[path[:-len("kernel")] + "bias"]
    axes = input_axes(path, value.ndim, np.ndim(bias))
    scale = np.max(np.abs(value), axis=axes, keepdims=True) / INT8_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # an all-zero channel stays 0
    out[path] = np.clip(np.rint(value / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    out[path + SCALE_SUFFIX] = scale
  return out


def dequantize(flat: dict, dtype="float32") -> dict:
  """The float parameters of a quantized flat dict; traceable (runs inside the served
  function, so the int8 arrays are its inputs). Unquantized entries pass through."""
  import jax.numpy as jnp
  out = {}
  for path, value in flat.items():
    if path.endswith(SCALE_SUFFIX):
      continue
    scale = flat.get(path + SCALE_SUFFIX)
    if scale is None:
      out[path] = value
    else:
      out[path] = (value.astype(jnp.float32) * scale).astype(dtype)
  return out


def nbytes(flat: dict) -> int:
  return int(sum(np.asarray(v).nbytes for v in flat.values()))


def size_report(float_flat: dict, quantized_flat: dict) -> dict:
  """Parameter bytes before and after, and the share of parameters that became int8."""
  before, after = nbytes(float_flat), nbytes(quantized_flat)
  kernels = dense_kernels(float_flat)
  quantized = sum(int(np.size(float_flat[p])) for p in kernels)
  total = sum(int(np.size(v)) for v in float_flat.values())
  return {"float_bytes": before, "int8_bytes": after,
          "reduction": round(before / max(after, 1), 3),
          "int8_parameter_share": round(quantized / max(total, 1), 4),
          "quantized_kernels": len(kernels)}
