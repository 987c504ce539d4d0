"""TFDS builders that tokenize raw files once into array_record shards under a data dir.

Each builder's config name is a hash of the source files' bytes, the tokenizer directory's
files and the settings that change the stored examples, so a second run with the same inputs
reuses `<data_dir>/<builder>/<hash>/<version>/` and any change prepares afresh. Shards are
array_record (no TensorFlow needed); they are read back with `builder.as_data_source()`.

Stored examples are unpadded; `pipeline.py` pads them to fixed shapes and batches them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from flaxbert.data import finetuning, pretraining, readers
from flaxbert.data.tokenizer import Tokenizer, load_tokenizer
from flaxbert.errors import FlaxbertError

log = logging.getLogger("flaxbert.data")

_INT_SEQUENCE = tfds.features.Tensor(shape=(None,), dtype=np.int32)


def _hash_file(digest, path: str) -> None:
  if not os.path.isfile(path):
    raise FlaxbertError(f"{path}: no such file")
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)


def fingerprint(sources: dict[str, Sequence[str]], tokenizer_dir: str, settings: dict) -> str:
  """Hash of what a prepared dataset depends on: file contents (not names or dates)."""
  digest = hashlib.sha256()
  digest.update(json.dumps(settings, sort_keys=True).encode())
  for split in sorted(sources):
    digest.update(f"split {split} {len(sources[split])}".encode())
    for path in sources[split]:
      _hash_file(digest, path)
  if not os.path.isdir(tokenizer_dir):
    raise FlaxbertError(f"{tokenizer_dir}: no such tokenizer directory")
  for name in sorted(os.listdir(tokenizer_dir)):
    path = os.path.join(tokenizer_dir, name)
    if os.path.isfile(path):
      digest.update(name.encode())
      _hash_file(digest, path)
  return digest.hexdigest()[:20]


class _FlaxbertBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing: sources per split, a tokenizer directory, settings, a hashed config."""

  VERSION = tfds.core.Version("1.0.0")

  # TFDS looks for a checksums file next to a builder's code, and for builders inside a
  # package that lookup needs `importlib_resources`, which tfds 4.9 only declares for
  # Python < 3.9. These builders download nothing, so there is no code path to search.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def __init__(self, *, sources: dict[str, Sequence[str]], tokenizer_dir: str, data_dir: str,
               config_name: str | None = None, **settings):
    self.sources = {split: [paths] if isinstance(paths, str) else list(paths)
                    for split, paths in sources.items()}
    self.settings = settings
    self.tokenizer_dir = tokenizer_dir
    self._tokenizer: Tokenizer | None = None
    name = config_name or "h" + fingerprint(self.sources, tokenizer_dir,
                                            {"version": str(self.VERSION), **settings})
    super().__init__(data_dir=data_dir, config=tfds.core.BuilderConfig(name=name),
                     file_format="array_record")
    # TFDS pickles a builder as its __init__ arguments (grain worker processes unpickle the
    # data source); with the hash passed along, workers do not re-read the source files.
    self._original_state = dict(sources=self.sources, tokenizer_dir=tokenizer_dir,
                                data_dir=data_dir, config_name=name, **settings)

  def _info_with(self, **kwargs) -> tfds.core.DatasetInfo:
    # Records stay in generation (file) order: evaluation output follows the input file, and
    # the pipeline does its own seeded shuffling.
    return self.dataset_info_from_configs(disable_shuffling=True, **kwargs)

  @property
  def tokenizer(self) -> Tokenizer:
    if self._tokenizer is None:
      self._tokenizer = load_tokenizer(self.tokenizer_dir)
    return self._tokenizer

  def _split_generators(self, dl_manager):
    return {split: self._logged(split, paths) for split, paths in self.sources.items()}

  def _logged(self, split, paths):
    skips = readers.SkipCounter(f"{self.name} {split} ({', '.join(paths)})")
    count = 0
    for key, example in self._generate_examples(split, paths, skips):
      count += 1
      yield key, example
    skips.log()
    if not count:
      raise FlaxbertError(f"{', '.join(paths)}: no usable examples for split {split!r}")
    log.info("%s %s: %d examples", self.name, split, count)

  def _generate_examples(self, split: str, paths: list[str], skips: readers.SkipCounter
                         ) -> Iterator[tuple[int | str, dict]]:
    """(key, example) pairs of one split; each builder kind implements it."""
    raise NotImplementedError


class PretrainingPairs(_FlaxbertBuilder):
  """Sentence pairs for BERT pretraining: `input_ids` ([CLS] A [SEP] B [SEP]), `nsp_label`.

  Settings: seq_length, seed (pairing), short_seq_prob, max_line_chars.
  """

  def _info(self):
    return self._info_with(features=tfds.features.FeaturesDict({
        "input_ids": _INT_SEQUENCE,
        "nsp_label": tfds.features.Scalar(dtype=np.int32)}))

  def _generate_examples(self, split, paths, skips):
    tokenizer = self.tokenizer
    documents = _tokenize_documents(
        tokenizer, readers.iter_documents(
            paths, skips, self.settings.get("max_line_chars", readers.MAX_LINE_CHARS)), skips)
    if len(documents) < 2:
      raise FlaxbertError(f"{', '.join(paths)}: next-sentence prediction needs at least two "
                          "documents (separate documents with a blank line); found "
                          f"{len(documents)}")
    rng = random.Random(self.settings.get("seed", 0))
    pairs = pretraining.create_pairs(documents, self.settings["seq_length"], rng,
                                     self.settings.get("short_seq_prob",
                                                       pretraining.SHORT_SEQ_PROB))
    cls, sep = np.int32(tokenizer.cls_id), np.int32(tokenizer.sep_id)
    for key, (a, b, is_random_next) in enumerate(pairs):
      ids = np.concatenate([[cls], a, [sep], b, [sep]]).astype(np.int32)
      yield key, {"input_ids": ids, "nsp_label": is_random_next}


def _tokenize_documents(tokenizer: Tokenizer, documents: Iterator[list[str]],
                        skips: readers.SkipCounter, batch_sentences: int = 4096
                        ) -> list[list[np.ndarray]]:
  """Tokenized documents, in batches of sentences (the tokenizers run batches natively).

  Sentences that tokenize to nothing (only control characters) and the documents they empty
  are counted. All documents are held in memory, as BERT's reference does, because random
  next sentences need any document at any time: about 100 bytes per sentence.
  """
  result: list[list[np.ndarray]] = []
  pending: list[list[str]] = []
  pending_sentences = 0

  def flush():
    flat = [s for doc in pending for s in doc]
    encoded = iter(tokenizer.encode_batch(flat))
    for doc in pending:
      sentences = [np.asarray(ids, np.int32) for ids in (next(encoded) for _ in doc)]
      kept = [s for s in sentences if len(s)]
      if len(kept) < len(sentences):
        skips.skip("sentences skipped: no tokens", f"document {len(result)}")
      if kept:
        result.append(kept)
      else:
        skips.skip("documents skipped: no tokens", f"document {len(result)}")
    pending.clear()

  for doc in documents:
    pending.append(doc)
    pending_sentences += len(doc)
    if pending_sentences >= batch_sentences:
      flush()
      pending_sentences = 0
  flush()
  return result


def _label_files(sources: dict[str, Sequence[str] | str], unlabeled: Sequence[str] = ()
                 ) -> list[str]:
  """The files label names are read from: the "train" split, else the first split; not the
  `unlabeled` ones."""
  paths = sources.get("train", next(iter(sources.values()), []))
  return [p for p in ([paths] if isinstance(paths, str) else paths) if p not in unlabeled]


class TextClassification(_FlaxbertBuilder):
  """TSV `sentence<TAB>label` or `sentence1<TAB>sentence2<TAB>label`.

  Settings: max_seq_length, labels (names; default: sorted labels of the train split),
  regression (float labels), unlabeled (source files of texts without labels: label -1).
  """

  def __init__(self, **kwargs):
    kwargs.setdefault("regression", False)
    if not kwargs["regression"] and not kwargs.get("labels"):
      kwargs["labels"] = finetuning.collect_labels(
          _label_files(kwargs["sources"], kwargs.get("unlabeled", ())))
    super().__init__(**kwargs)

  def _info(self):
    label = (tfds.features.Scalar(dtype=np.float32) if self.settings["regression"]
             else tfds.features.ClassLabel(names=self.settings["labels"]))
    return self._info_with(features=tfds.features.FeaturesDict({
        "input_ids": _INT_SEQUENCE, "segment_ids": _INT_SEQUENCE, "label": label}))

  def _generate_examples(self, split, paths, skips):
    yield from finetuning.classification_examples(
        self.tokenizer, paths, self.settings["max_seq_length"],
        None if self.settings["regression"] else self.settings["labels"], skips,
        self.settings.get("unlabeled", ()))


class TokenTagging(_FlaxbertBuilder):
  """CoNLL `token<TAB>tag` sentences; `labels` marks each word's first sub-token, -1 elsewhere.

  Settings: max_seq_length, labels (tag names; default: sorted tags of the train split),
  unlabeled (source files of raw text, a sentence per line: labels -1; with them every
  example has `kd_token_mask`, see finetuning.tagging_examples).
  """

  def __init__(self, **kwargs):
    if not kwargs.get("labels"):
      kwargs["labels"] = finetuning.collect_tags(
          _label_files(kwargs["sources"], kwargs.get("unlabeled", ())))
    super().__init__(**kwargs)

  def _info(self):
    features = {"input_ids": _INT_SEQUENCE, "labels": _INT_SEQUENCE,
                "num_words": tfds.features.Scalar(dtype=np.int32)}
    if self.settings.get("unlabeled"):
      features["kd_token_mask"] = _INT_SEQUENCE
    return self._info_with(
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(labels=list(self.settings["labels"])))

  def _generate_examples(self, split, paths, skips):
    yield from finetuning.tagging_examples(self.tokenizer, paths,
                                           self.settings["max_seq_length"],
                                           self.settings["labels"], skips,
                                           self.settings.get("unlabeled", ()))


class SquadFeatures(_FlaxbertBuilder):
  """SQuAD v1.1 windows: ids, answer token positions, and per-token character offsets into
  the context (-1 outside it) so predictions map back to answer text.

  Settings: max_seq_length, doc_stride, max_query_length, unlabeled (source files whose
  questions have no answer to learn: start and end -1).
  """

  def _info(self):
    return self._info_with(features=tfds.features.FeaturesDict({
        "input_ids": _INT_SEQUENCE, "segment_ids": _INT_SEQUENCE,
        "start_position": tfds.features.Scalar(dtype=np.int32),
        "end_position": tfds.features.Scalar(dtype=np.int32),
        "example_id": tfds.features.Text(),
        "token_char_start": _INT_SEQUENCE, "token_char_end": _INT_SEQUENCE,
        "token_is_max_context": _INT_SEQUENCE}))

  def _generate_examples(self, split, paths, skips):
    s = self.settings
    for path in paths:
      yield from finetuning.squad_examples(
          self.tokenizer, readers.read_squad(path, skips), s["max_seq_length"],
          s.get("doc_stride", 128), s.get("max_query_length", 64), key_prefix=path,
          unlabeled=path in s.get("unlabeled", ()))


class ParallelText(_FlaxbertBuilder):
  """TSV `source<TAB>target` for sequence-to-sequence; both sides end with [SEP] as EOS.

  Settings: max_source_length, max_target_length.
  """

  def _info(self):
    return self._info_with(features=tfds.features.FeaturesDict({
        "source_ids": _INT_SEQUENCE, "target_ids": _INT_SEQUENCE}))

  def _generate_examples(self, split, paths, skips):
    yield from finetuning.parallel_examples(self.tokenizer, paths,
                                            self.settings["max_source_length"],
                                            self.settings["max_target_length"], skips)


@contextlib.contextmanager
def _lock(path: str):
  """An exclusive file lock, so processes sharing a data dir prepare a dataset once."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(builder_class: type[_FlaxbertBuilder], *, sources: dict[str, Sequence[str] | str],
            tokenizer_dir: str, data_dir: str, **settings) -> _FlaxbertBuilder:
  """Prepares (or reuses) a dataset and returns its builder; read with `as_data_source()`."""
  builder = builder_class(sources=sources, tokenizer_dir=tokenizer_dir, data_dir=data_dir,
                          **settings)
  with _lock(os.path.join(data_dir, f"{builder.name}-{builder.builder_config.name}.lock")):
    # Made again under the lock: a builder reads the dataset's info when it is made, so one
    # made while another process was still preparing would see no splits. The hash made
    # above is passed on, so the source files are not read a second time.
    builder = builder_class(sources=sources, tokenizer_dir=tokenizer_dir, data_dir=data_dir,
                            config_name=builder.builder_config.name, **settings)
    if not builder.is_prepared():
      log.info("preparing %s in %s", builder.name, builder.data_dir)
      # TFDS prints banners and progress bars of its own; our log lines above and the example
      # counts say the same, so its output is dropped (stdout stays the caller's, e.g. JSON).
      tfds.disable_progress_bar()
      with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        builder.download_and_prepare(file_format="array_record")
  return builder
