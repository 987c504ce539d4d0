"""Feature extraction (BERT's extract_features): per-token hidden states and pooled vectors."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.inference.text_input import read_text_lines
from flaxbert.interop.bundle import Bundle
from flaxbert.models.heads import BertEncoder
from flaxbert.training.progress import progress_bar


def encode_rows(tokenizer, rows, max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """input_ids, segment_ids, input_mask (N x S, S = longest row) for (text_a, text_b) rows."""
  a_ids = tokenizer.encode_batch([a for a, _ in rows])
  pairs = [(i, b) for i, (_, b) in enumerate(rows) if b is not None]
  b_ids = dict(zip((i for i, _ in pairs), tokenizer.encode_batch([b for _, b in pairs])))
  built = [tokenizer.build_inputs(a_ids[i], b_ids.get(i), max_length) for i in range(len(rows))]
  length = max(len(ids) for ids, _ in built)
  input_ids = np.full((len(rows), length), tokenizer.pad_id, np.int32)
  segment_ids = np.zeros((len(rows), length), np.int32)
  input_mask = np.zeros((len(rows), length), np.int32)
  for row, (ids, segments) in enumerate(built):
    input_ids[row, :len(ids)] = ids
    segment_ids[row, :len(ids)] = segments
    input_mask[row, :len(ids)] = 1
  return input_ids, segment_ids, input_mask


def embed_arrays(bundle: Bundle, input_ids, segment_ids, input_mask, batch_size: int,
                 show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Hidden (N x S x H, zero at padding) and pooled (N x H) float32 features."""
  encoder = BertEncoder(bundle.config)
  params = {"params": {"bert": bundle.params["bert"]}}

  @jax.jit
  def features(ids, segments, mask):
    out = encoder.apply(params, ids, segments, mask)
    return out["hidden"] * mask[..., None], out["pooled"]

  n = len(input_ids)
  hidden = np.zeros(input_ids.shape + (bundle.config.hidden_size,), np.float32)
  pooled = np.zeros((n, bundle.config.hidden_size), np.float32)
  with progress_bar(total=n, desc="embed", unit="text", disable=not show_progress) as bar:
    for start in range(0, n, batch_size):
      stop = min(start + batch_size, n)
      # Pad the last batch to full size so every batch reuses one compiled function.
      pad = batch_size - (stop - start)
      batch = [np.pad(x[start:stop], ((0, pad), (0, 0))) for x in
               (input_ids, segment_ids, input_mask)]
      h, p = features(*map(jnp.asarray, batch))
      hidden[start:stop] = np.asarray(h)[:stop - start]
      pooled[start:stop] = np.asarray(p)[:stop - start]
      bar.update(stop - start)
  return hidden, pooled


def embed_file(bundle: Bundle, input_path: str, output_path: str, *, max_length: int = 128,
               batch_size: int = 32, show_progress: bool = True) -> dict[str, np.ndarray]:
  if not 2 <= max_length <= bundle.config.max_position_embeddings:
    raise FlaxbertError(f"--max-length {max_length} must be between 2 and the model's "
                        f"{bundle.config.max_position_embeddings} positions")
  if batch_size < 1:
    raise FlaxbertError(f"--batch-size must be positive, got {batch_size}")
  out_dir = os.path.dirname(os.path.abspath(output_path))
  if not os.path.isdir(out_dir):
    raise FlaxbertError(f"{out_dir}: output directory does not exist")
  rows = read_text_lines(input_path)
  input_ids, segment_ids, input_mask = encode_rows(bundle.tokenizer, rows, max_length)
  hidden, pooled = embed_arrays(bundle, input_ids, segment_ids, input_mask, batch_size,
                                show_progress)
  result = {"hidden": hidden, "mask": input_mask, "pooled": pooled, "input_ids": input_ids}
  # Written to a temporary name first, so a kill never leaves a truncated .npz behind.
  tmp = output_path + ".partial.npz"
  np.savez(tmp, **result)
  os.replace(tmp, output_path)
  return result
