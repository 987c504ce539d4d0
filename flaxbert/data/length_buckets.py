"""Length-bucketed training batches: similar lengths in one batch, trimmed padding.

Fine-tuning data is padded to the task's maximum lengths, but real rows are much shorter
(dictionary phrases: 9 source and 11 target pieces against 64 + 64). Bucketing sorts each
window of `window` shuffled global batches by length, cuts the sorted window into batches
and visits those in a seeded random order; the loader then cuts every batch's padding to
the longest row of the global batch, rounded up to a multiple of `multiple` so only a few
shapes are ever compiled.

Everything is a pure function of (seed, batch index), like the unbucketed order, so grain's
random access and the checkpointed iterator state (the next batch index) are unchanged, and
every process computes the same global batch and trim lengths for its own rows.
"""

from __future__ import annotations

import os

import numpy as np

from flaxbert.data.sampling import shuffle_indices


def record_lengths(builder, split: str, fields: tuple[str, ...]) -> np.ndarray:
  """int32 [records, len(fields)]: each stored record's length of each sequence field.

  Read once (raw array_record + protobuf, no TFDS decoding) and cached beside the prepared
  data, whose directory is already keyed by the data's contents and settings.
  """
  cache = os.path.join(builder.data_dir, f"lengths-{split}-{'-'.join(fields)}.npy")
  if os.path.isfile(cache):
    return np.load(cache)
  from tensorflow_datasets.proto import tf_example_pb2
  source = builder.as_data_source()[split]
  raw = getattr(source, "data_source", None)
  lengths = np.zeros((len(source), len(fields)), np.int32)
  chunk = 4096
  for start in range(0, len(source), chunk):
    indices = list(range(start, min(start + chunk, len(source))))
    if raw is not None:
      for row, record in zip(indices, raw.__getitems__(indices)):
        feature = tf_example_pb2.Example.FromString(record).features.feature
        lengths[row] = [len(feature[f].int64_list.value) for f in fields]
    else:
      for row, record in zip(indices, source.__getitems__(indices)):
        lengths[row] = [len(record[f]) for f in fields]
  tmp = f"{cache}.{os.getpid()}.tmp.npy"
  np.save(tmp, lengths)
  os.replace(tmp, cache)
  return lengths


def round_up(length: np.ndarray | int, multiple: int, maximum: np.ndarray | int):
  return np.minimum(-(-np.asarray(length) // multiple) * multiple, maximum)


class BucketedGlobalBatches:
  """Random access to this process's rows of each (endless) global batch, length-bucketed.

  Returns int64 [rows, 2 + F]: (epoch, record index, then the trim length of each of the F
  length fields, the same in every row: the global batch's longest, rounded up).
  """

  def __init__(self, lengths: np.ndarray, max_lengths: tuple[int, ...], *, batch_size: int,
               seed: int, process_index: int, process_count: int, window: int = 32,
               multiple: int = 8):
    self._shuffle = shuffle_indices
    self.lengths = lengths
    self.num_records = len(lengths)
    self.max_lengths = np.asarray(max_lengths, np.int64)
    self.batch_size, self.seed, self.window, self.multiple = batch_size, seed, window, multiple
    self.per_process = batch_size // process_count
    self.offset = process_index * self.per_process
    # Sort key: the padded shape the row needs (then its total length), so a batch's rows
    # share a bucket whenever the window allows.
    rounded = round_up(lengths, multiple, self.max_lengths)
    self._key = rounded.astype(np.int64) @ (np.int64(1 << 16) ** np.arange(
        lengths.shape[1])[::-1]) * 4096 + lengths.sum(axis=1)

  def __len__(self) -> int:
    return np.iinfo(np.int64).max

  def __getitem__(self, batch: int) -> np.ndarray:
    if batch < 0:
      raise IndexError(batch)
    window, slot = divmod(batch, self.window)
    span = self.window * self.batch_size
    positions = window * span + np.arange(span)
    epoch, index = np.divmod(positions, self.num_records)
    index = self._shuffle(index, self.num_records, self.seed, epoch)
    order = np.argsort(self._key[index], kind="stable")
    # Which sorted batch this slot is: a seeded permutation of the window's batches, so
    # lengths do not rise through the window.
    chosen = np.random.default_rng([self.seed, window, 0xB0C]).permutation(self.window)[slot]
    rows = order[chosen * self.batch_size:(chosen + 1) * self.batch_size]
    trim = round_up(self.lengths[index[rows]].max(axis=0), self.multiple, self.max_lengths)
    mine = rows[self.offset:self.offset + self.per_process]
    return np.concatenate([np.stack([epoch[mine], index[mine]], axis=1),
                           np.broadcast_to(trim, (len(mine), len(trim)))],
                          axis=1).astype(np.int64)
