"""Fill-mask: the most likely tokens, with probabilities, for each [MASK] in a text.

flaxbert's tokenizers never turn a literal "[MASK]" typed in text into the mask token (so data
cannot inject control tokens), so the text is split on the literal mask string here and the
mask id put between the encoded pieces, as transformers' tokenizer does with its added
special tokens. Scores are the softmax over the whole vocabulary at each mask, as
transformers' `pipeline("fill-mask")` computes them; rows are batched by length and the
top-k taken on the device, so only B x masks x k numbers come back per batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.bundle import Bundle
from flaxbert.errors import FlaxbertError
from flaxbert.inference import bucketing
from flaxbert.inference.embed import bert_bundle, compiled_for, inference_config
from flaxbert.progress import progress_bar

MLM_HEADS = ("pretraining", "mlm")
PUNCTUATION = ".,!?;:'"


def check_mlm_head(bundle: Bundle) -> None:
  if bundle.head not in MLM_HEADS:
    raise FlaxbertError(f"fill-mask needs a bundle with a masked-LM head (pretraining); this "
                        f"one's head is {bundle.head!r}")


def encode_masked(tokenizer, texts: list[str], max_length: int) -> list[dict[str, np.ndarray]]:
  """BERT inputs of texts whose literal mask strings become the mask token; a text without
  one, or whose masks fall past `max_length`, is a one-line error."""
  mask = tokenizer.id_to_token(tokenizer.mask_id)
  pieces = [text.split(mask) for text in texts]
  for number, (text, parts) in enumerate(zip(texts, pieces), start=1):
    if len(parts) < 2:
      raise FlaxbertError(f"text {number} has no {mask} to fill: {text[:60]!r}")
  encoded = iter(tokenizer.encode_batch([part for parts in pieces for part in parts]))
  rows = []
  for number, parts in enumerate(pieces, start=1):
    ids = list(next(encoded))
    for _ in parts[1:]:
      ids += [tokenizer.mask_id] + list(next(encoded))
    input_ids, segment_ids = tokenizer.build_inputs(ids, None, max_length)
    if input_ids.count(tokenizer.mask_id) < len(parts) - 1:
      raise FlaxbertError(f"text {number}: a {mask} falls past --max-length {max_length}")
    rows.append({"input_ids": np.asarray(input_ids, np.int32),
                 "segment_ids": np.asarray(segment_ids, np.int32),
                 "input_mask": np.ones(len(input_ids), np.int32)})
  return rows


def make_fill_fn(bundle: Bundle, masks: int, top_k: int):
  """{input_ids, segment_ids, input_mask} [B, L] -> the top-k "scores" and "token_ids"
  (B x masks x k) at each row's first `masks` mask tokens (rows with fewer masks get
  candidates for other positions too, which the caller drops)."""
  model = bundle.model.clone(config=inference_config(bundle.config))
  mask_id, vocab = bundle.tokenizer.mask_id, bundle.tokenizer.vocab_size

  def run(variables, batch):   # variables an argument, not constants: see CompiledCache
    ids_BxL = batch["input_ids"]
    # A stable sort puts each row's mask positions first, in text order.
    positions_BxP = jnp.argsort(ids_BxL != mask_id, axis=1, stable=True)[:, :masks]
    out = model.apply(variables, ids_BxL, batch["segment_ids"], batch["input_mask"],
                      masked_positions=positions_BxP)
    return top_candidates(out["mlm_logits"], vocab, top_k)

  return run


def top_candidates(mlm_logits, vocab_size: int, top_k: int) -> dict:
  """{"scores", "token_ids"} (... x k): the `top_k` most likely tokens of MLM logits
  (... x V). Softmax over every output (as transformers); candidates only among the
  tokenizer's `vocab_size` tokens, when the model's vocabulary is padded beyond them."""
  probs = jax.nn.softmax(mlm_logits.astype(jnp.float32), axis=-1)
  scores, ids = jax.lax.top_k(probs[..., :vocab_size], top_k)
  return {"scores": scores, "token_ids": ids}


def fill_mask(bundle, texts, top_k: int = 5, *, batch_size: int = 32,
              max_length: int | None = None,
              show_progress: bool = False) -> list[list[list[dict]]]:
  """For each text, for each [MASK] in it (in order), the `top_k` most likely tokens:
  [{"token": vocabulary piece, "token_id", "score": probability, "sequence": the text with
  this mask filled (other masks shown as [MASK])}], best first.

  bundle: a Bundle with a masked-LM head, or a bundle / HF checkpoint directory.
  texts: strings holding the literal mask string "[MASK]"; a single string is one text.
  max_length: tokens per row, [CLS]/[SEP] included (default: the model's positions).
  """
  bundle = bert_bundle(bundle, "fill-mask")
  check_mlm_head(bundle)
  tokenizer = bundle.tokenizer
  if not 1 <= top_k <= tokenizer.vocab_size:
    raise FlaxbertError(f"--top-k must be between 1 and the vocabulary's "
                        f"{tokenizer.vocab_size} tokens, got {top_k}")
  if batch_size < 1:
    raise FlaxbertError(f"--batch-size must be positive, got {batch_size}")
  positions = bundle.config.max_position_embeddings
  max_length = positions if max_length is None else max_length
  if not 3 <= max_length <= positions:
    raise FlaxbertError(f"--max-length {max_length} must be between 3 and the model's "
                        f"{positions} positions")
  texts = [texts] if isinstance(texts, str) else list(texts)
  if not texts:
    return []
  rows = encode_masked(tokenizer, texts, max_length)
  counts = [int((row["input_ids"] == tokenizer.mask_id).sum()) for row in rows]
  masks = max(counts)
  fn = compiled_for(bundle, ("fill_mask", masks, top_k),
                    lambda: (make_fill_fn(bundle, masks, top_k), {"params": bundle.params}))
  buckets = bucketing.default_buckets(max(len(row["input_ids"]) for row in rows))
  with progress_bar(total=len(rows), desc="fill-mask", unit="text",
                    disable=not show_progress) as bar:
    out = bucketing.run_bucketed(fn, rows, batch_size, buckets,
                                 pad_values={"input_ids": tokenizer.pad_id},
                                 progress=bar.update)
  results = []
  for row, count, scores, ids in zip(rows, counts, out["scores"], out["token_ids"]):
    results.append([mask_candidates(tokenizer, row["input_ids"], m, scores[m], ids[m])
                    for m in range(count)])
  return results


def mask_candidates(tokenizer, input_ids, which: int, scores, token_ids) -> list[dict]:
  """The candidates of the `which`-th mask of a row, each with its filled-in sequence."""
  text_ids = [int(i) for i in input_ids[1:-1]]   # without [CLS] and the final [SEP]
  positions = [i for i, t in enumerate(text_ids) if t == tokenizer.mask_id]
  here, mask = positions[which], tokenizer.id_to_token(tokenizer.mask_id)
  candidates = []
  for score, token_id in zip(scores.tolist(), token_ids.tolist()):
    filled = text_ids[:here] + [int(token_id)] + text_ids[here + 1:]
    # The other masks stay visible (decode drops special tokens, so decode between them).
    cuts = [-1] + [p for p in positions if p != here] + [len(filled)]
    parts = [tokenizer.decode(filled[a + 1:b]) for a, b in zip(cuts, cuts[1:])]
    sequence = parts[0]
    for part in parts[1:]:   # no space before punctuation, as the decoders' own clean-up
      sequence += f" {mask}" + ("" if part[:1] in PUNCTUATION else " ") + part
    sequence = sequence.strip()
    candidates.append({"token": tokenizer.id_to_token(token_id), "token_id": int(token_id),
                       "score": float(score), "sequence": sequence})
  return candidates
