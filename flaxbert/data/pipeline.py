"""Batches from prepared data: grain over TFDS array_record sources, split across processes,
with an iterator whose state is a small JSON dict (for the Orbax checkpoint).

Order of operations, for pretraining and fine-tuning alike:
  global batch b -> positions b*B.. -> (epoch, record index), shuffled per epoch
  -> this process's rows -> one read of those records -> mask/pad the whole batch in numpy.
Batching indices globally before splitting means every process yields the same number of
batches (no multi-host hang at the end of a finite run) and together the processes see
exactly the global batch. Work per batch runs on grain's prefetch threads, or on worker
processes with `worker_count`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import grain
import numpy as np

from flaxbert.data import builders, length_buckets, packing, pretraining
from flaxbert.data.sampling import batched_indices, check_process_split
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError


class BatchIterator:
  """Numpy batches; `get_state()` / `set_state()` resume exactly at the next batch.

  The state names the dataset it belongs to, so restoring a checkpoint against different
  data or batch settings fails loudly instead of silently reading other batches.
  """

  def __init__(self, dataset: grain.MapDataset, identity: str, read_options: grain.ReadOptions,
               num_records: int, worker_count: int = 0):
    self.num_records = num_records   # examples per epoch, all processes together
    self._dataset = dataset
    # Worker processes change the state's layout: a state resumes only with the same count.
    self._identity = f"{identity}:workers{worker_count}"
    iter_dataset = dataset.to_iter_dataset(read_options)
    if worker_count > 0:
      _allow_grain_workers()
      iter_dataset = iter_dataset.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=worker_count))
    self._iterator = iter(iter_dataset)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def __len__(self) -> int:
    """Batches per full pass (finite datasets only)."""
    return len(self._dataset)

  def get_state(self) -> dict[str, Any]:
    return {"dataset": self._identity, "grain": self._iterator.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("dataset") != self._identity:
      raise FlaxbertError("the checkpoint's data iterator belongs to other data or batch "
                          f"settings ({state.get('dataset')} != {self._identity}); "
                          "restart without it or use the original settings")
    self._iterator.set_state(state["grain"])


def _allow_grain_workers() -> None:
  """grain's worker processes read absl flags; a program that never parsed them (any
  non-absl launcher) would fail on first access, so mark them parsed with their defaults."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  return process_index, process_count


def _default_read_options() -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=min(8, os.cpu_count() or 1), prefetch_buffer_size=8)


class _PairReader:
  """Reads a batch of stored pairs in one array_record call and parses the records with
  protobuf directly: TFDS's generic per-record decoding costs several times the read.

  The fast path is checked against TFDS's own decoding of the first records when the reader
  is made; if the stored layout ever differs, reading falls back to TFDS.
  """

  def __init__(self, source):
    self._source = source
    self._raw = getattr(source, "data_source", None)
    self._fast = False
    if self._raw is not None:
      try:
        probe = list(range(min(4, len(source))))
        flat, lengths, labels = self._parse(self._raw.__getitems__(probe))
        expected = source.__getitems__(probe)
        self._fast = (np.array_equal(flat, np.concatenate([e["input_ids"] for e in expected]))
                      and lengths.tolist() == [len(e["input_ids"]) for e in expected]
                      and labels.tolist() == [int(e["nsp_label"]) for e in expected])
      except Exception:   # any surprise in the layout: use TFDS's decoding
        self._fast = False

  @staticmethod
  def _parse(records):
    from tensorflow_datasets.proto import tf_example_pb2
    parse = tf_example_pb2.Example.FromString
    ids, lengths, labels = [], [], []
    for record in records:
      feature = parse(record).features.feature
      values = feature["input_ids"].int64_list.value
      ids.append(np.array(values, np.int32))
      lengths.append(len(values))
      labels.append(feature["nsp_label"].int64_list.value[0])
    return (np.concatenate(ids) if ids else np.zeros(0, np.int32),
            np.array(lengths, np.int64), np.array(labels, np.int32))

  def __call__(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(concatenated input_ids, lengths, nsp labels) of the records at `indices`."""
    if self._fast:
      return self._parse(self._raw.__getitems__(indices))
    records = self._source.__getitems__(indices)
    return (np.concatenate([np.asarray(r["input_ids"], np.int32) for r in records]),
            np.array([len(r["input_ids"]) for r in records], np.int64),
            np.array([r["nsp_label"] for r in records], np.int32))


def _stack(examples: Sequence[dict]) -> dict[str, np.ndarray]:
  return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


# --- pretraining ----------------------------------------------------------------------------

def pretraining_batches(corpus_files: Sequence[str], tokenizer_dir: str, data_dir: str, *,
                        batch_size: int, seq_length: int = 128, seed: int = 0,
                        max_predictions: int | None = None, whole_word: bool = False,
                        num_epochs: int | None = None, process_index: int | None = None,
                        process_count: int | None = None,
                        read_options: grain.ReadOptions | None = None,
                        worker_count: int = 0, pack: bool = False) -> BatchIterator:
  """Endless (or `num_epochs`) masked-LM + NSP batches of `batch_size // process_count` rows.

  Prepares the sentence pairs under `data_dir` on first use (keyed by corpus and tokenizer
  contents, seq_length and seed). Fields: input_ids, segment_ids, input_mask [B,S];
  masked_positions, masked_ids [B,P] int32, masked_weights [B,P] float32; nsp_label [B]
  (1 = B is a random sentence). P = ceil(0.15 * S) unless given.

  `pack` (endless only): several pairs per row, see data/packing.py for the fields.
  """
  process_index, process_count = _process_shard(process_index, process_count)
  builder = builders.prepare(builders.PretrainingPairs, sources={"train": list(corpus_files)},
                             tokenizer_dir=tokenizer_dir, data_dir=data_dir,
                             seq_length=seq_length, seed=seed)
  source = builder.as_data_source()["train"]
  tokenizer = load_tokenizer(tokenizer_dir)
  masker = pretraining.Masker(
      seq_length=seq_length, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
      sep_id=tokenizer.sep_id, mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids,
      word_start=tokenizer.is_word_start(range(tokenizer.vocab_size)), seed=seed,
      max_predictions=max_predictions, whole_word=whole_word)

  read = _PairReader(source)

  def load(rows: np.ndarray) -> dict[str, np.ndarray]:
    flat_ids, lengths, nsp_labels = read(rows[:, 1].tolist())   # one read per batch
    return masker.batch(flat_ids, lengths, nsp_labels, rows[:, 0], rows[:, 1])

  identity = (f"pretraining:{builder.builder_config.name}:b{batch_size}:p{process_index}/"
              f"{process_count}:s{seed}:P{masker.max_predictions}:w{int(whole_word)}")
  if pack:
    if num_epochs is not None:
      raise ValueError("packed pretraining batches are endless")
    check_process_split(batch_size, process_index, process_count)
    per_row = packing.default_max_per_row(seq_length)
    row_predictions = packing.packed_max_predictions(seq_length, per_row,
                                                     masker.max_predictions)
    plan = packing.PackedGlobalBatches(
        length_buckets.record_lengths(builder, "train", ("input_ids",))[:, 0],
        seq_length=seq_length, batch_size=batch_size, seed=seed, process_index=process_index,
        process_count=process_count, max_per_row=per_row)

    def load_packed(slots: np.ndarray) -> dict[str, np.ndarray]:
      members = slots.reshape(-1, 2)
      members = members[members[:, 1] >= 0]
      flat_ids, lengths, nsp_labels = read(members[:, 1].tolist())
      examples = masker.batch(flat_ids, lengths, nsp_labels, members[:, 0], members[:, 1])
      return packing.pack_batch(examples, lengths, slots[:, :, 1] >= 0,
                                seq_length=seq_length, max_predictions=row_predictions,
                                pad_id=tokenizer.pad_id)

    return BatchIterator(grain.MapDataset.source(plan).map(load_packed),
                         f"{identity}:packed{per_row}", read_options or _default_read_options(),
                         len(source), worker_count)
  indices = batched_indices(len(source), batch_size=batch_size, seed=seed, shuffle=True,
                            num_epochs=num_epochs, drop_remainder=True,
                            process_index=process_index, process_count=process_count)
  return BatchIterator(indices.map(load), identity, read_options or _default_read_options(),
                       len(source), worker_count)


# --- fine-tuning ----------------------------------------------------------------------------

_TASKS = {
    "classification": builders.TextClassification,
    "regression": builders.TextClassification,
    "tagging": builders.TokenTagging,
    "squad": builders.SquadFeatures,
    "seq2seq": builders.ParallelText,
}


class TaskData:
  """A prepared fine-tuning dataset: its splits, label names, and batches of each split.

  Batches are padded to fixed shapes: input_ids, segment_ids, input_mask [B,S] and
  - classification: label [B] int32 (regression: float32)
  - tagging: labels [B,S] (-1 on non-first sub-tokens, specials, padding), num_words [B]
  - squad: start_position, end_position [B]; example_id [B] (bytes); token_char_start,
    token_char_end [B,S] (-1 outside the context); token_is_max_context [B,S]
  - seq2seq: source_ids, source_mask [B,Ss]; target_ids, target_mask [B,St] (no input_ids)
  and always example_weight [B] float32: 0 for the rows that fill an incomplete last batch.
  """

  def __init__(self, task: str, builder: builders._FlaxbertBuilder, pad_id: int):
    self.task = task
    self.builder = builder
    self.pad_id = pad_id
    self.sources = builder.as_data_source()
    settings = builder.settings
    self.labels: list[str] | None = settings.get("labels") if task != "regression" else None
    if task == "seq2seq":
      self._lengths = {"source_ids": settings["max_source_length"],
                       "target_ids": settings["max_target_length"]}
    else:
      self._lengths = {"input_ids": settings["max_seq_length"]}

  def num_examples(self, split: str) -> int:
    return len(self._source(split))

  def _source(self, split: str):
    if split not in self.sources:
      raise FlaxbertError(f"no {split!r} split (have {', '.join(self.sources)})")
    return self.sources[split]

  def batches(self, split: str, *, batch_size: int, seed: int = 0, shuffle: bool = True,
              num_epochs: int | None = None, drop_remainder: bool = True,
              process_index: int | None = None, process_count: int | None = None,
              read_options: grain.ReadOptions | None = None,
              worker_count: int = 0, bucket_by_length: bool = False,
              joined: dict[str, np.ndarray] | None = None) -> BatchIterator:
    """Training: the defaults (shuffled, endless). Evaluation: `shuffle=False, num_epochs=1,
    drop_remainder=False` visits every example once in file order.

    `joined`: more fields, arrays indexed by the split's record index (one row per stored
    example, e.g. a distillation teacher's outputs), joined to each batch by example; zeros
    on the rows that fill an incomplete batch.

    `bucket_by_length` (endless shuffled training only): batches of similar lengths, their
    sequence fields cut to the batch's longest row rounded up to 8 (data/length_buckets.py).
    """
    process_index, process_count = _process_shard(process_index, process_count)
    source = self._source(split)
    blank = self._pad(source[0])
    fields = tuple(self._lengths)

    def load(rows: np.ndarray) -> dict[str, np.ndarray]:
      real = rows[:, 1][rows[:, 1] >= 0].tolist()
      examples = [{**self._pad(record), "example_weight": np.float32(1)}
                  for record in (source.__getitems__(real) if real else [])]
      examples += [{**blank, "example_weight": np.float32(0)}] * (len(rows) - len(real))
      batch = _stack(examples)
      for key, values in (joined or {}).items():
        batch[key] = np.zeros((len(rows),) + values.shape[1:], values.dtype)
        batch[key][:len(real)] = values[real]
      if rows.shape[1] > 2:
        batch = self._trim(batch, dict(zip(fields, rows[0, 2:].tolist())))
      return batch

    if bucket_by_length:
      if joined:
        raise ValueError("joined fields are not cut to length buckets")
      if not shuffle or num_epochs is not None:
        raise ValueError("bucket_by_length is for endless shuffled training batches")
      check_process_split(batch_size, process_index, process_count)
      indices = grain.MapDataset.source(length_buckets.BucketedGlobalBatches(
          length_buckets.record_lengths(self.builder, split, fields),
          tuple(self._lengths.values()), batch_size=batch_size, seed=seed,
          process_index=process_index, process_count=process_count))
    else:
      indices = batched_indices(len(source), batch_size=batch_size, seed=seed,
                                shuffle=shuffle, num_epochs=num_epochs,
                                drop_remainder=drop_remainder, process_index=process_index,
                                process_count=process_count)
    identity = (f"{self.task}:{self.builder.builder_config.name}:{split}:b{batch_size}:"
                f"p{process_index}/{process_count}:s{seed}:{int(shuffle)}:{num_epochs}:"
                f"{int(drop_remainder)}" + (":bucketed" if bucket_by_length else ""))
    return BatchIterator(indices.map(load), identity, read_options or _default_read_options(),
                         len(source), worker_count)

  def _trim(self, batch: dict[str, np.ndarray], trim: dict[str, int]) -> dict[str, np.ndarray]:
    """Cuts the padding of each [B, max length] field of a length group to `trim`."""
    groups = {key.split("_")[0] + "_": key for key in trim} if self.task == "seq2seq" else {}
    out = {}
    for key, value in batch.items():
      group = next((g for g in groups if key.startswith(g)), None)
      length_key = groups[group] if group else "input_ids"
      if (value.ndim == 2 and length_key in trim
          and value.shape[1] == self._lengths[length_key]):
        value = value[:, :trim[length_key]]
      out[key] = value
    return out

  def _pad(self, record: dict) -> dict[str, np.ndarray]:
    """Pads every sequence field to its task length; adds the masks."""
    out = {}
    length_of = self._lengths
    sequence_length = length_of.get("input_ids")
    for key, value in record.items():
      if isinstance(value, np.ndarray) and value.ndim == 1:
        length = length_of.get(key, sequence_length)
        pad = self.pad_id if key.endswith("_ids") and key != "segment_ids" else \
            (-1 if key in ("labels", "token_char_start", "token_char_end") else 0)
        padded = np.full(length, pad, np.int32)
        padded[:len(value)] = value
        out[key] = padded
        if key in ("input_ids", "source_ids", "target_ids"):
          mask = np.zeros(length, np.int32)
          mask[:len(value)] = 1
          out[key.replace("_ids", "_mask") if key != "input_ids" else "input_mask"] = mask
      elif isinstance(value, bytes):
        out[key] = np.asarray(value, dtype=object)
      else:
        out[key] = np.asarray(value, np.float32 if self.task == "regression" and key == "label"
                              else np.int32)
    if "input_ids" in out and "segment_ids" not in out:
      out["segment_ids"] = np.zeros(sequence_length, np.int32)
    return out


def finetune_data(task: str, sources: dict[str, str | Sequence[str]], tokenizer_dir: str,
                  data_dir: str, *, max_seq_length: int = 128, **settings) -> TaskData:
  """Prepares (or reuses) a fine-tuning dataset.

  task: "classification" (TSV sentence[, sentence2], label), "regression" (same, numeric
  label), "tagging" (CoNLL), "squad" (SQuAD v1.1 JSON; settings doc_stride=128,
  max_query_length=64), "seq2seq" (TSV source, target; settings max_source_length,
  max_target_length, default max_seq_length). `sources` maps split names to files; label
  names come from the "train" split (else the first) unless `labels=[...]` is given.
  """
  if task not in _TASKS:
    raise FlaxbertError(f"unknown task {task!r} (known: {', '.join(_TASKS)})")
  if task == "seq2seq":
    settings.setdefault("max_source_length", max_seq_length)
    settings.setdefault("max_target_length", max_seq_length)
  else:
    settings["max_seq_length"] = max_seq_length
  if task == "regression":
    settings["regression"] = True
  builder = builders.prepare(_TASKS[task], sources=sources, tokenizer_dir=tokenizer_dir,
                             data_dir=data_dir, **settings)
  return TaskData(task, builder, load_tokenizer(tokenizer_dir).pad_id)
