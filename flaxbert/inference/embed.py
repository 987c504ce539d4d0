"""Feature extraction (BERT's extract_features): per-token hidden states and pooled vectors."""

from __future__ import annotations

import os

import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.inference import bucketing
from flaxbert.inference.serving import inference_dtype
from flaxbert.inference.text_input import read_text_lines
from flaxbert.bundle import Bundle
from flaxbert.models.heads import BertEncoder
from flaxbert.progress import progress_bar


def encode_rows(tokenizer, rows, max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """input_ids, segment_ids, input_mask (N x S, S = longest row) for (text_a, text_b) rows."""
  encoded = tokenizer.encode_inputs(rows, max_length)
  return (bucketing.stack_padded([r["input_ids"] for r in encoded], fill=tokenizer.pad_id),
          bucketing.stack_padded([r["segment_ids"] for r in encoded]),
          bucketing.stack_padded([r["input_mask"] for r in encoded]))


def inference_config(config):
  """The config features are computed in: bfloat16 on GPU/TPU, float32 on CPU."""
  return config.replace(dtype=inference_dtype())


def make_features_fn(bundle: Bundle):
  """{input_ids, segment_ids, input_mask} [B, L] -> {"hidden" (zero at padding), "pooled"}."""
  encoder = BertEncoder(inference_config(bundle.config))
  params = {"params": {"bert": bundle.params["bert"]}}

  def features(batch):
    out = encoder.apply(params, batch["input_ids"], batch["segment_ids"], batch["input_mask"])
    return {"hidden": out["hidden"] * batch["input_mask"][..., None], "pooled": out["pooled"]}

  return features


def embed_rows(bundle: Bundle, rows, batch_size: int, buckets=None,
               show_progress: bool = True, fn=None) -> dict[str, list]:
  """Per-row {"hidden" (length x H), "pooled" (H)} for unpadded rows, in input order, with
  length-bucketed batches; `fn` (a CompiledCache of `make_features_fn`) may be reused across
  calls so compiled shapes are kept."""
  fn = fn or bucketing.CompiledCache(make_features_fn(bundle))
  buckets = buckets or bucketing.default_buckets(max(len(r["input_ids"]) for r in rows))
  with progress_bar(total=len(rows), desc="embed", unit="text",
                    disable=not show_progress) as bar:
    return bucketing.run_bucketed(fn, rows, batch_size, buckets, per_token=("hidden",),
                                  pad_values={"input_ids": bundle.tokenizer.pad_id},
                                  progress=bar.update)


def embed_arrays(bundle: Bundle, input_ids, segment_ids, input_mask, batch_size: int,
                 show_progress: bool = True, buckets=None) -> tuple[np.ndarray, np.ndarray]:
  """Hidden (N x S x H, zero at padding) and pooled (N x H) float32 features of padded
  arrays; computed in length buckets (`buckets=(S,)` gives the old one-length batches)."""
  lengths = np.asarray(input_mask).sum(axis=1)
  rows = [{"input_ids": input_ids[i, :n], "segment_ids": segment_ids[i, :n],
           "input_mask": input_mask[i, :n]} for i, n in enumerate(lengths)]
  buckets = buckets or bucketing.default_buckets(input_ids.shape[1])
  out = embed_rows(bundle, rows, batch_size, buckets, show_progress)
  hidden = bucketing.stack_padded(out["hidden"], input_ids.shape[1]).astype(np.float32)
  return hidden, np.stack(out["pooled"]).astype(np.float32)


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
