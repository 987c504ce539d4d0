"""T5-style span corruption over a text corpus, for encoder-decoder pretraining.

Text is read and tokenized by the same code as BERT pretraining (readers.iter_documents,
builders._tokenize_documents) and stored once as chunks of `chunk_length` tokens, each within
one document (`PackedText`, a TFDS builder keyed by contents like the others). At batch time
each chunk of n tokens gets round(0.15 n) noise tokens in round(noise / 3) spans (T5's
random_spans_noise_mask: noise and non-noise lengths are random partitions, interleaved,
starting with non-noise). The source keeps the non-noise tokens with each span replaced by
one sentinel, then EOS; the target is each sentinel followed by its span, then EOS:

    chunk   a b c d e f g h       source  a <S0> d e <S1> h EOS
                                  target  <S0> b c <S1> f g EOS

Sentinels are the ids just above the tokenizer's vocabulary (sentinel k = tokenizer
vocab_size + k), inside the model's embedding table, which `model_vocab_size` rounds up to
hold them. Choosing ids the tokenizer never produces means no tokenizer change: the same
tokenizer directory (and bundle) serves pretraining and fine-tuning, no text can collide
with a sentinel, and fine-tuning simply never uses those rows.

Noise masks are drawn from the counter-based streams of pretraining.example_streams, keyed
by (seed, epoch, example index), so a resumed run corrupts every example exactly as before.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from flaxbert.data import builders, pretraining, readers
from flaxbert.data.pipeline import BatchIterator, _default_read_options, _process_shard, \
    batched_indices
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError

NOISE_DENSITY = 0.15
MEAN_SPAN_LENGTH = 3.0


def span_counts(length: int, noise_density: float = NOISE_DENSITY,
                mean_span_length: float = MEAN_SPAN_LENGTH) -> tuple[int, int]:
  """(noise tokens, spans) for a chunk of `length` tokens (at least one of each, if >= 2)."""
  num_noise = int(round(length * noise_density))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = max(int(round(num_noise / mean_span_length)), 1)
  return num_noise, num_spans


def corrupted_lengths(chunk_length: int) -> tuple[int, int]:
  """(source length, target length) of a full chunk, EOS included: the padded shapes."""
  noise, spans = span_counts(chunk_length)
  return chunk_length - noise + spans + 1, noise + spans + 1


def model_vocab_size(tokenizer_vocab: int, chunk_length: int) -> int:
  """Embedding rows for the tokenizer's pieces plus the sentinels, rounded up to 128."""
  return -(-(tokenizer_vocab + span_counts(chunk_length)[1]) // 128) * 128


def _partition(total: int, parts: int, words: np.ndarray) -> np.ndarray:
  """`parts` positive lengths summing to `total`, a uniform random composition."""
  if parts == 1:
    return np.array([total])
  order = np.argsort(words[:total - 1], kind="stable")   # a random permutation of 1..total-1
  cuts = np.sort(order[:parts - 1] + 1)
  return np.diff(np.concatenate([[0], cuts, [total]]))


def corrupt(ids: np.ndarray, words: np.ndarray, first_sentinel: int, eos_id: int
            ) -> tuple[np.ndarray, np.ndarray]:
  """(source, target) ids of one chunk; `words` are >= 2 * len(ids) random uint64 words."""
  n = len(ids)
  num_noise, num_spans = span_counts(n)
  num_spans = min(num_spans, num_noise, n - num_noise)
  noise_lengths = _partition(num_noise, num_spans, words[:n])
  keep_lengths = _partition(n - num_noise, num_spans, words[n:2 * n])
  source, target, position = [], [], 0
  for span, (keep, noise) in enumerate(zip(keep_lengths, noise_lengths)):
    sentinel = first_sentinel + span
    source.extend(ids[position:position + keep])
    source.append(sentinel)
    position += keep
    target.append(sentinel)
    target.extend(ids[position:position + noise])
    position += noise
  source.append(eos_id)
  target.append(eos_id)
  return np.asarray(source, np.int32), np.asarray(target, np.int32)


class PackedText(builders._FlaxbertBuilder):
  """Chunks of at most `chunk_length` token ids, each within one document (`input_ids`).

  Settings: chunk_length, max_line_chars. Chunks shorter than 2 tokens are dropped.
  """

  def _info(self):
    return self._info_with(features=tfds.features.FeaturesDict({
        "input_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32)}))

  def _generate_examples(self, split, paths, skips):
    documents = builders._tokenize_documents(
        self.tokenizer, readers.iter_documents(
            paths, skips, self.settings.get("max_line_chars", readers.MAX_LINE_CHARS)), skips)
    size = self.settings["chunk_length"]
    key = 0
    for document in documents:
      tokens = np.concatenate(document).astype(np.int32)
      for start in range(0, len(tokens), size):
        chunk = tokens[start:start + size]
        if len(chunk) >= 2:
          yield key, {"input_ids": chunk}
          key += 1


def span_corruption_batches(corpus_files, tokenizer_dir: str, data_dir: str, *,
                            batch_size: int, chunk_length: int = 128, seed: int = 0,
                            num_epochs: int | None = None, process_index: int | None = None,
                            process_count: int | None = None,
                            worker_count: int = 0) -> BatchIterator:
  """Endless (or `num_epochs`) batches: source_ids, source_mask [B, Ss], target_ids,
  target_mask [B, St] int32, with (Ss, St) = corrupted_lengths(chunk_length)."""
  if chunk_length < 4:
    raise FlaxbertError(f"span corruption needs chunks of at least 4 tokens, not {chunk_length}")
  process_index, process_count = _process_shard(process_index, process_count)
  builder = builders.prepare(PackedText, sources={"train": list(corpus_files)},
                             tokenizer_dir=tokenizer_dir, data_dir=data_dir,
                             chunk_length=chunk_length)
  source = builder.as_data_source()["train"]
  tokenizer = load_tokenizer(tokenizer_dir)
  first_sentinel, eos, pad = tokenizer.vocab_size, tokenizer.sep_id, tokenizer.pad_id
  source_length, target_length = corrupted_lengths(chunk_length)

  def load(rows: np.ndarray) -> dict[str, np.ndarray]:
    records = source.__getitems__(rows[:, 1].tolist())
    words = pretraining.example_streams(seed, rows[:, 0], rows[:, 1], 2 * chunk_length, 1)[0]
    out = {"source_ids": np.full((len(rows), source_length), pad, np.int32),
           "target_ids": np.full((len(rows), target_length), pad, np.int32)}
    out["source_mask"] = np.zeros_like(out["source_ids"])
    out["target_mask"] = np.zeros_like(out["target_ids"])
    for row, record in enumerate(records):
      src, tgt = corrupt(np.asarray(record["input_ids"], np.int32), words[row], first_sentinel,
                         eos)
      out["source_ids"][row, :len(src)], out["source_mask"][row, :len(src)] = src, 1
      out["target_ids"][row, :len(tgt)], out["target_mask"][row, :len(tgt)] = tgt, 1
    return out

  indices = batched_indices(len(source), batch_size=batch_size, seed=seed, shuffle=True,
                            num_epochs=num_epochs, drop_remainder=True,
                            process_index=process_index, process_count=process_count)
  identity = (f"span_corruption:{builder.builder_config.name}:b{batch_size}:p{process_index}/"
              f"{process_count}:s{seed}:n{chunk_length}")
  return BatchIterator(indices.map(load), identity, _default_read_options(), len(source),
                       worker_count)
