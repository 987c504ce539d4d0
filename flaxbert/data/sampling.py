"""Which records each process reads, in which order: a global shuffle (a new seeded
permutation every epoch, computed for any positions at once), global batches, and each
process's slice of every global batch. Pure functions of (seed, batch index), so grain's
random access, multi-process slicing and checkpointed iterator positions all agree."""

from __future__ import annotations

import sys

import grain
import numpy as np

from flaxbert.data import pretraining
from flaxbert.errors import FlaxbertError


def shuffle_indices(positions: np.ndarray, num_records: int, seed: int,
                    epoch: np.ndarray | int) -> np.ndarray:
  """A seeded permutation of range(num_records) for each epoch, applied to `positions`.

  A Feistel network over the smallest power-of-four domain that holds the records, walking
  out-of-range values back in ("cycle walking"): a bijection computed for any batch of
  positions at once, in O(batch) memory however large the dataset.
  """
  positions = np.asarray(positions, np.uint64)
  bits = max(2, (max(num_records - 1, 1)).bit_length())
  bits += bits % 2
  half = np.uint64(bits // 2)
  low_mask = np.uint64((1 << (bits // 2)) - 1)
  keys = pretraining.example_streams(seed, np.broadcast_to(np.asarray(epoch), positions.shape),
                                     np.zeros(positions.shape, np.int64), 6, 1)[0]
  with np.errstate(over="ignore"):
    out = positions.copy()
    pending = np.ones(out.shape, bool)
    while pending.any():
      left, right = out[pending] >> half, out[pending] & low_mask
      for k in range(6):
        left, right = right, left ^ (pretraining._mix(right + keys[pending, k]) & low_mask)
      out[pending] = (left << half) | right
      pending = out >= np.uint64(num_records)
  return out.astype(np.int64)


class _GlobalBatches:
  """Random access to this process's rows of each global batch: int64 [rows, 2] of
  (epoch, record index). Global position p is record shuffle(p % N) of epoch p // N."""

  def __init__(self, num_records: int, *, batch_size: int, seed: int, shuffle: bool,
               num_epochs: int | None, drop_remainder: bool, process_index: int,
               process_count: int):
    self.num_records, self.batch_size, self.seed, self.shuffle = (num_records, batch_size,
                                                                  seed, shuffle)
    self.per_process = batch_size // process_count
    self.offset = process_index * self.per_process
    self.total = None if num_epochs is None else num_records * num_epochs
    if self.total is None:
      self.length = sys.maxsize
    else:
      self.length = (self.total // batch_size if drop_remainder
                     else -(-self.total // batch_size))

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, batch: int) -> np.ndarray:
    if not 0 <= batch < self.length:
      raise IndexError(batch)
    positions = batch * self.batch_size + self.offset + np.arange(self.per_process)
    epoch, index = np.divmod(positions, self.num_records)
    if self.shuffle:
      index = shuffle_indices(index, self.num_records, self.seed, epoch)
    if self.total is not None:   # rows past the end fill the last batch: (last epoch, -1)
      beyond = positions >= self.total
      epoch[beyond], index[beyond] = (self.total - 1) // self.num_records, -1
    return np.stack([epoch, index], axis=1).astype(np.int64)


def check_process_split(batch_size: int, process_index: int, process_count: int) -> None:
  """Every process takes batch_size / process_count rows of each global batch."""
  if batch_size % process_count:
    raise FlaxbertError(f"batch size {batch_size} does not divide among {process_count} "
                        "processes")
  if not 0 <= process_index < process_count:
    raise FlaxbertError(f"process index {process_index} is not in [0, {process_count})")


def batched_indices(num_records: int, *, batch_size: int, seed: int, shuffle: bool,
                    num_epochs: int | None, drop_remainder: bool, process_index: int,
                    process_count: int) -> grain.MapDataset:
  """Batches of (epoch, record index) rows for this process: int64 [batch_size/count, 2].

  Records are shuffled globally (a new permutation each epoch) and batched globally; each
  process takes its slice of every global batch, so the processes' rows are disjoint and
  together cover every record of an epoch. Without `drop_remainder`, the last global batch
  is filled with rows (epoch, -1), which the loaders turn into padding examples of weight 0.
  """
  check_process_split(batch_size, process_index, process_count)
  if num_records == 0:
    raise FlaxbertError("the prepared dataset is empty")
  return grain.MapDataset.source(_GlobalBatches(
      num_records, batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
      drop_remainder=drop_remainder, process_index=process_index, process_count=process_count))
