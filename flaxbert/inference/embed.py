"""Feature extraction (BERT's extract_features) and sentence embeddings.

Per-token hidden states and BERT's pooled vector for every text, and one embedding per text
pooled from chosen hidden layers: the [CLS] state, BERT's pooler, or the mean (or max) over the
real tokens, optionally L2-normalised, with sentence-transformers' formulas. A bundle imported
from a sentence-transformers checkpoint brings its own pooling as the default
(`Bundle.sentence_embedding`, kept in the bundle's config.json).
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.inference import bucketing
from flaxbert.inference.serving import inference_dtype
from flaxbert.inference.text_input import read_text_lines
from flaxbert.bundle import Bundle, load as load_bundle
from flaxbert.models.config import BertConfig
from flaxbert.models.heads import BertEncoder
from flaxbert.progress import progress_bar

POOLINGS = ("cls", "pooler", "mean", "max")
DEFAULT_POOLING = "mean"   # sentence-transformers' own default for a plain encoder
DEFAULT_MAX_LENGTH = 128


@dataclasses.dataclass(frozen=True)
class Pooling:
  """How one text's hidden states become one vector.

  mode: "cls" (the [CLS] state), "pooler" (BERT's tanh dense on it), "mean" or "max" over
    the real tokens (sentence-transformers' formulas).
  layers: the hidden states averaged before pooling, as non-negative indices into
    transformers' `hidden_states` order (0 = the embeddings' output, num_layers = the last).
  """

  mode: str = DEFAULT_POOLING
  normalize: bool = False
  layers: tuple[int, ...] = ()

  def describe(self, num_layers: int) -> str:
    layers = ",".join(str(i - num_layers - 1) for i in self.layers)
    return f"{self.mode} pooling{', normalized' if self.normalize else ''}, layers {layers}"


def parse_layers(text: str) -> tuple[int, ...]:
  """'-4,-3,-2,-1' -> (-4, -3, -2, -1)."""
  try:
    layers = tuple(int(part) for part in text.split(","))
  except ValueError:
    raise FlaxbertError(f"--layers {text!r}: expected comma-separated layer numbers such as "
                        "-1 or -4,-3,-2,-1") from None
  return layers


def resolve_pooling(bundle: Bundle, pooling: str | None = None, normalize: bool | None = None,
                    layers: Sequence[int] | None = None) -> Pooling:
  """The pooling asked for; what is not given comes from the bundle's sentence-transformers
  default, else mean pooling of the last layer, not normalised."""
  base = default_pooling(bundle.sentence_embedding, pooling, normalize)
  count = bundle.config.num_layers + 1
  layers = tuple(layers) if layers is not None else (-1,)
  if not layers:
    raise FlaxbertError("--layers names no layer")
  for layer in layers:
    if not -count <= layer < count:
      raise FlaxbertError(f"layer {layer} does not exist: the model has {count} hidden "
                          f"states (-{count}..{count - 1}; -1 is the last layer, 0 the "
                          "embeddings)")
  layers = tuple(layer % count for layer in layers)
  if base.mode == "pooler" and layers != (count - 1,):
    raise FlaxbertError("--pooling pooler is BERT's pooled output of the last layer; "
                        "--layers applies to cls, mean and max")
  return dataclasses.replace(base, layers=layers)


def default_pooling(sentence_embedding: dict | None, pooling: str | None = None,
                    normalize: bool | None = None) -> Pooling:
  """The mode and normalisation of `resolve_pooling` (layers left empty: the last), from a
  bundle's (or a serving export's) `sentence_embedding` record."""
  default = sentence_embedding or {}
  mode = pooling or default.get("pooling") or DEFAULT_POOLING
  if mode not in POOLINGS:
    if pooling is None:
      raise FlaxbertError(f"the checkpoint's sentence-transformers pooling {mode!r} is not "
                          f"supported; choose one with --pooling ({', '.join(POOLINGS)})")
    raise FlaxbertError(f"unknown pooling {mode!r}: use one of {', '.join(POOLINGS)}")
  if normalize is None:
    normalize = bool(default.get("normalize", False))
  return Pooling(mode, bool(normalize))


def pool(hidden_BxLxD, pooled_BxD, input_mask_BxL, pooling: Pooling):
  """One vector per row (B x D, float32), as sentence-transformers' Pooling + Normalize."""
  if pooling.mode == "pooler":
    x_BxD = pooled_BxD
  elif pooling.mode == "cls":
    x_BxD = hidden_BxLxD[:, 0]
  else:
    mask_BxLx1 = input_mask_BxL[..., None].astype(jnp.float32)
    if pooling.mode == "mean":
      x_BxD = ((hidden_BxLxD * mask_BxLx1).sum(axis=1)
               / jnp.maximum(mask_BxLx1.sum(axis=1), 1e-9))
    else:
      x_BxD = jnp.where(mask_BxLx1 > 0, hidden_BxLxD, -1e9).max(axis=1)
  if pooling.normalize:   # torch.nn.functional.normalize: x / max(||x||, 1e-12)
    x_BxD = x_BxD / jnp.maximum(jnp.linalg.norm(x_BxD, axis=-1, keepdims=True), 1e-12)
  return x_BxD


def encode_rows(tokenizer, rows, max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """input_ids, segment_ids, input_mask (N x S, S = longest row) for (text_a, text_b) rows."""
  encoded = tokenizer.encode_inputs(rows, max_length)
  return (bucketing.stack_padded([r["input_ids"] for r in encoded], fill=tokenizer.pad_id),
          bucketing.stack_padded([r["segment_ids"] for r in encoded]),
          bucketing.stack_padded([r["input_mask"] for r in encoded]))


def inference_config(config):
  """The config features are computed in: bfloat16 on GPU/TPU, float32 on CPU."""
  return config.replace(dtype=inference_dtype())


def encoder_variables(bundle: Bundle) -> dict:
  """The variables `make_features_fn`'s function takes: the encoder's parameters."""
  return {"params": {"bert": bundle.params["bert"]}}


def make_features_fn(bundle: Bundle, pooling: Pooling | None = None, features: bool = True):
  """(encoder_variables(bundle), {input_ids, segment_ids, input_mask} [B, L]) ->
  {"hidden" (zero at padding), "pooled"} when `features`, and {"embeddings"} (B x D) when
  `pooling` is given. The parameters are an argument, not a closure: compiled in as
  constants they would make every compile fold through the weights and every persistent
  cache entry hold a copy of them (bucketing.CompiledCache)."""
  last = bundle.config.num_layers
  # Every layer's hidden states only when other layers than the last are pooled.
  all_layers = pooling is not None and pooling.layers != (last,)
  encoder = BertEncoder(inference_config(bundle.config), all_layers=all_layers)

  def run(variables, batch):
    out = encoder.apply(variables, batch["input_ids"], batch["segment_ids"], batch["input_mask"])
    result = {}
    if features:
      result["hidden"] = out["hidden"] * batch["input_mask"][..., None]
      result["pooled"] = out["pooled"]
    if pooling is not None:
      hidden_BxLxD = out["hidden"]
      if all_layers:
        hidden_BxLxD = jnp.stack([out["all_hidden"][i] for i in pooling.layers]).mean(axis=0)
      result["embeddings"] = pool(hidden_BxLxD, out["pooled"], batch["input_mask"], pooling)
    return result

  return run


_compiled: dict[tuple, bucketing.CompiledCache] = {}


def compiled_for(bundle: Bundle, key: tuple, make: Callable[[], tuple[Callable, Any]]):
  """One CompiledCache(*make()) (a function and its variables) per (bundle, key), kept while
  the bundle lives, so that repeated calls on one bundle (a pipeline's) compile each shape
  once."""
  key = (id(bundle), id(bundle.params)) + key
  fn = _compiled.get(key)
  if fn is None:
    fn = _compiled[key] = bucketing.CompiledCache(*make())
    weakref.finalize(bundle, _compiled.pop, key, None)
  return fn


def embed_rows(bundle: Bundle, rows, batch_size: int, buckets=None,
               show_progress: bool = True, fn=None) -> dict[str, list]:
  """Per-row outputs of `fn` (default: {"hidden" (length x H), "pooled" (H)}) for unpadded
  rows, in input order, with length-bucketed batches; `fn` (a CompiledCache of
  `make_features_fn`) may be reused across calls so compiled shapes are kept."""
  fn = fn or bucketing.CompiledCache(make_features_fn(bundle), encoder_variables(bundle))
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


def bert_bundle(bundle, purpose: str = "embed") -> Bundle:
  """A loaded BERT bundle, from a Bundle or a bundle / HF checkpoint path."""
  if isinstance(bundle, (str, os.PathLike)):
    bundle = load_bundle(os.fspath(bundle))
  if not isinstance(bundle.config, BertConfig):
    raise FlaxbertError(f"{purpose} needs a BERT bundle, not an encoder-decoder one")
  return bundle


def check_settings(bundle: Bundle, max_length: int | None, batch_size: int) -> int:
  """The max length to use (a sentence-transformers checkpoint's own max_seq_length, else
  128, at most the model's positions, when None); bad values are one-line errors."""
  positions = bundle.config.max_position_embeddings
  if max_length is None:
    recorded = (bundle.sentence_embedding or {}).get("max_length")
    max_length = min(recorded or DEFAULT_MAX_LENGTH, positions)
  if not 2 <= max_length <= positions:
    raise FlaxbertError(f"--max-length {max_length} must be between 2 and the model's "
                        f"{positions} positions")
  if batch_size < 1:
    raise FlaxbertError(f"--batch-size must be positive, got {batch_size}")
  return max_length


def sentence_embeddings(bundle, texts, *, pooling: str | None = None,
                        normalize: bool | None = None, layers: Sequence[int] | None = None,
                        batch_size: int = 32, max_length: int | None = None,
                        show_progress: bool = False) -> np.ndarray:
  """One float32 vector per text (N x H), in input order, batched by length.

  bundle: a Bundle, or a bundle / HF (sentence-transformers) checkpoint directory.
  texts: strings, or (text_a, text_b) pairs; a single string is one text.
  pooling, normalize, layers: see `resolve_pooling`; None takes the bundle's default
    (all-MiniLM-L6-v2: mean pooling, normalised), else mean pooling of the last layer.
  """
  bundle = bert_bundle(bundle)
  spec = resolve_pooling(bundle, pooling, normalize, layers)
  max_length = check_settings(bundle, max_length, batch_size)
  texts = [texts] if isinstance(texts, str) else list(texts)
  if not texts:
    return np.zeros((0, bundle.config.hidden_size), np.float32)
  rows = bundle.tokenizer.encode_inputs(
      [(t, None) if isinstance(t, str) else (t[0], t[1]) for t in texts], max_length)
  fn = compiled_for(bundle, ("embeddings", spec),
                    lambda: (make_features_fn(bundle, spec, features=False),
                             encoder_variables(bundle)))
  out = embed_rows(bundle, rows, batch_size, bucketing.default_buckets(max_length),
                   show_progress, fn)
  return np.stack(out["embeddings"]).astype(np.float32)


def embed_file(bundle: Bundle, input_path: str, output_path: str, *,
               max_length: int | None = None, batch_size: int = 32,
               pooling: str | None = None, normalize: bool | None = None,
               layers: Sequence[int] | None = None,
               show_progress: bool = True) -> dict[str, np.ndarray]:
  """Writes `output_path` (.npz): hidden, mask, pooled, input_ids and the pooled
  `embeddings` (N x H) of every line of `input_path`, in one bucketed pass."""
  bundle = bert_bundle(bundle)
  spec = resolve_pooling(bundle, pooling, normalize, layers)
  max_length = check_settings(bundle, max_length, batch_size)
  out_dir = os.path.dirname(os.path.abspath(output_path))
  if not os.path.isdir(out_dir):
    raise FlaxbertError(f"{out_dir}: output directory does not exist")
  rows = bundle.tokenizer.encode_inputs(read_text_lines(input_path), max_length)
  fn = bucketing.CompiledCache(make_features_fn(bundle, spec), encoder_variables(bundle))
  # Buckets of --max-length, not of this file's longest row: other files (and the next run,
  # through the persistent compilation cache) reuse the same compiled shapes.
  out = embed_rows(bundle, rows, batch_size, bucketing.default_buckets(max_length),
                   show_progress, fn)
  length = max(len(r["input_ids"]) for r in rows)
  result = {
      "hidden": bucketing.stack_padded(out["hidden"], length).astype(np.float32),
      "mask": bucketing.stack_padded([r["input_mask"] for r in rows], length),
      "pooled": np.stack(out["pooled"]).astype(np.float32),
      "embeddings": np.stack(out["embeddings"]).astype(np.float32),
      "input_ids": bucketing.stack_padded([r["input_ids"] for r in rows], length,
                                          fill=bundle.tokenizer.pad_id)}
  # Written to a temporary name first, so a kill never leaves a truncated .npz behind.
  tmp = output_path + ".partial.npz"
  np.savez(tmp, **result)
  os.replace(tmp, output_path)
  return result
