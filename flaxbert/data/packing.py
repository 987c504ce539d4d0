"""Packed pretraining rows: several short examples per sequence, no computed padding.

A stored pretraining pair fills its sequence only when its document is long enough; at the
ends of documents (and with short_seq_prob) rows are part padding -- 26% of the tokens of KJV
pairs at length 512. Packing lays examples end to end in one row:

  input_mask    0 for padding, else k = 1.. the example's number within the row (the
                attention mask is block-diagonal: a token sees only its own example)
  position_ids  restart at 0 for each example
  masked_*      every example's MLM predictions, positions in row coordinates
  nsp_positions, nsp_label, nsp_weights [B, E]: each example's [CLS] position and label

Which examples share a row is a pure function of (seed, epoch): each epoch's shuffled order
is cut into rows by first-fit over a few open rows, so grain keeps random access and the
checkpointed iterator state (the next batch index) means the same rows after a restart, on
any number of processes.
"""

from __future__ import annotations

import threading

import numpy as np

from flaxbert.data.pretraining import default_max_predictions
from flaxbert.data.sampling import shuffle_indices

OPEN_ROWS = 8   # rows first-fit may still add to; more fills rows tighter but reorders more


def pack_rows(lengths: np.ndarray, capacity: int, max_per_row: int,
              open_rows: int = OPEN_ROWS) -> list[list[int]]:
  """Cuts a sequence of example lengths into rows of at most `capacity` tokens and
  `max_per_row` examples, keeping their order within a row; returns each row's positions.

  First fit over the `open_rows` most recent rows: an example goes into the first open row
  with room, else starts a new row (closing the oldest when too many are open).
  """
  rows: list[list[int]] = []
  room: list[int] = []
  open_ids: list[int] = []
  for position, length in enumerate(np.asarray(lengths).tolist()):
    for r in open_ids:
      if room[r] >= length and len(rows[r]) < max_per_row:
        rows[r].append(position)
        room[r] -= length
        break
    else:
      rows.append([position])
      room.append(capacity - length)
      open_ids.append(len(rows) - 1)
      if len(open_ids) > open_rows:
        open_ids.pop(0)
    open_ids = [r for r in open_ids if room[r] > 0 and len(rows[r]) < max_per_row]
  return rows


def default_max_per_row(seq_length: int) -> int:
  return max(2, min(16, seq_length // 32))


class PackedGlobalBatches:
  """Random access to this process's packed rows of each (endless) global batch.

  Returns int64 [rows, E, 2]: (epoch, record index) of each example in the row, (-1, -1)
  for empty slots. Row plans are computed per epoch on first use and kept (a few bytes per
  example).
  """

  def __init__(self, lengths: np.ndarray, *, seq_length: int, batch_size: int, seed: int,
               process_index: int, process_count: int, max_per_row: int):
    self._shuffle = shuffle_indices
    self.lengths = np.asarray(lengths, np.int64)
    self.num_records = len(lengths)
    self.seq_length, self.batch_size, self.seed = seq_length, batch_size, seed
    self.max_per_row = max_per_row
    self.per_process = batch_size // process_count
    self.offset = process_index * self.per_process
    self._starts = [0]   # first global row of each epoch planned so far, then the end
    self._plans: dict[int, np.ndarray] = {}
    # grain's prefetch threads call __getitem__ concurrently: plans are made under a lock.
    self._lock = threading.Lock()

  def __getstate__(self):   # for grain's worker processes: plans are remade there
    state = dict(self.__dict__, _starts=[0], _plans={})
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return np.iinfo(np.int64).max

  def _epoch_rows(self, epoch: int) -> np.ndarray:
    """[rows, E] record indices of this epoch's packed rows, -1 in empty slots."""
    if epoch not in self._plans:
      if len(self._plans) >= 4:
        self._plans.pop(min(self._plans))
      self._plans[epoch] = self._plan(epoch)
    return self._plans[epoch]

  def _plan(self, epoch: int) -> np.ndarray:
    order = self._shuffle(np.arange(self.num_records), self.num_records, self.seed, epoch)
    rows = pack_rows(self.lengths[order], self.seq_length, self.max_per_row)
    table = np.full((len(rows), self.max_per_row), -1, np.int64)
    for r, members in enumerate(rows):
      table[r, :len(members)] = order[members]
    return table

  def _locate(self, row: int) -> tuple[int, int]:
    while self._starts[-1] <= row:   # plan epochs up to the one holding `row`
      self._starts.append(self._starts[-1] + len(self._epoch_rows(len(self._starts) - 1)))
    epoch = int(np.searchsorted(self._starts, row, side="right")) - 1
    return epoch, row - self._starts[epoch]

  def __getitem__(self, batch: int) -> np.ndarray:
    if batch < 0:
      raise IndexError(batch)
    first = batch * self.batch_size + self.offset
    out = np.full((self.per_process, self.max_per_row, 2), -1, np.int64)
    with self._lock:
      for i in range(self.per_process):
        epoch, r = self._locate(first + i)
        members = self._epoch_rows(epoch)[r]
        used = members >= 0
        out[i, used, 0] = epoch
        out[i, used, 1] = members[used]
    return out


def pack_batch(examples: dict[str, np.ndarray], lengths: np.ndarray, slots: np.ndarray,
               *, seq_length: int, max_predictions: int, pad_id: int) -> dict[str, np.ndarray]:
  """Lays masked examples (Masker.batch output, one example per row, in slot order) into
  packed rows. `slots` [rows, E] bool marks the filled slots; examples fill them row-major.
  """
  rows, per_row = slots.shape
  S, P = seq_length, max_predictions
  out = {
      "input_ids": np.full((rows, S), pad_id, np.int32),
      "segment_ids": np.zeros((rows, S), np.int32),
      "input_mask": np.zeros((rows, S), np.int32),
      "position_ids": np.zeros((rows, S), np.int32),
      "masked_positions": np.zeros((rows, P), np.int32),
      "masked_ids": np.zeros((rows, P), np.int32),
      "masked_weights": np.zeros((rows, P), np.float32),
      "nsp_positions": np.zeros((rows, per_row), np.int32),
      "nsp_label": np.zeros((rows, per_row), np.int32),
      "nsp_weights": np.zeros((rows, per_row), np.float32),
  }
  # Row, slot and start column of every example; then one scatter per field.
  example_row, example_slot = np.nonzero(slots)
  lengths = np.asarray(lengths, np.int64)
  predictions = (examples["masked_weights"] > 0).sum(axis=1)

  def offsets(sizes):
    before = np.cumsum(sizes) - sizes                  # exclusive running sum over examples
    first = np.searchsorted(example_row, example_row)  # each example's row's first example
    return before - before[first]

  start, predicted = offsets(lengths), offsets(predictions)
  if len(predicted) and (predicted + predictions).max() > P:
    raise ValueError(f"a packed row needs more than {P} predictions")
  n, column = np.nonzero(np.arange(examples["input_ids"].shape[1])[None, :] < lengths[:, None])
  rows_t, cols_t = example_row[n], start[n] + column
  out["input_ids"][rows_t, cols_t] = examples["input_ids"][n, column]
  out["segment_ids"][rows_t, cols_t] = examples["segment_ids"][n, column]
  out["input_mask"][rows_t, cols_t] = example_slot[n] + 1
  out["position_ids"][rows_t, cols_t] = column
  n, j = np.nonzero(examples["masked_weights"] > 0)
  rows_p, cols_p = example_row[n], predicted[n] + j
  out["masked_positions"][rows_p, cols_p] = examples["masked_positions"][n, j] + start[n]
  out["masked_ids"][rows_p, cols_p] = examples["masked_ids"][n, j]
  out["masked_weights"][rows_p, cols_p] = 1.0
  out["nsp_positions"][example_row, example_slot] = start
  out["nsp_label"][example_row, example_slot] = examples["nsp_label"]
  out["nsp_weights"][example_row, example_slot] = 1.0
  return out


def packed_max_predictions(seq_length: int, max_per_row: int, per_example: int) -> int:
  """Predictions a packed row can need: each example takes at most max(1, round(0.15 n)),
  so the sum stays under 0.15 S plus one per example (and never over S)."""
  return min(seq_length, max(per_example, default_max_predictions(seq_length) + max_per_row))


def batch_shapes(batch_size: int, seq_length: int, max_predictions: int,
                 pack: bool) -> dict[str, tuple[tuple[int, ...], str]]:
  """(shape, dtype) of each field of a pretraining batch, padded or packed (for AOT
  compilation and benchmarks)."""
  b, s = batch_size, seq_length
  p, e = max_predictions, None
  if pack:
    e = default_max_per_row(s)
    p = packed_max_predictions(s, e, max_predictions)
  shapes = {"input_ids": ((b, s), "int32"), "segment_ids": ((b, s), "int32"),
            "input_mask": ((b, s), "int32"), "masked_positions": ((b, p), "int32"),
            "masked_ids": ((b, p), "int32"), "masked_weights": ((b, p), "float32"),
            "nsp_label": ((b,) if e is None else (b, e), "int32")}
  if pack:
    shapes.update({"position_ids": ((b, s), "int32"), "nsp_positions": ((b, e), "int32"),
                   "nsp_weights": ((b, e), "float32")})
  return shapes
