"""Translating text with an encoder-decoder bundle: batches of sources -> decoded strings, and
`predict_file` for `flaxbert predict BUNDLE --task seq2seq`."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.models import decoding


def encode_sources(tokenizer, texts: Sequence[str], max_source_length: int):
  """Padded ids and mask [N, max_source_length], each source cut and ended with EOS exactly as
  the seq2seq pipeline stores them."""
  ids = np.full((len(texts), max_source_length), tokenizer.pad_id, np.int32)
  mask = np.zeros_like(ids)
  for row, pieces in enumerate(tokenizer.encode_batch(list(texts))):
    pieces = pieces[:max_source_length - 1] + [tokenizer.sep_id]
    ids[row, :len(pieces)], mask[row, :len(pieces)] = pieces, 1
  return ids, mask


def translate(model, params, tokenizer, texts: Sequence[str], *, max_source_length: int = 128,
              max_length: int = 128, beam_size: int = 1, alpha: float = 0.6,
              batch_size: int = 64) -> tuple[list[str], int]:
  """(decoded strings, count of generated tokens incl. EOS), batches padded to a fixed shape
  so each setting compiles once."""
  ids, mask = encode_sources(tokenizer, texts, max_source_length)
  outputs, generated = [], 0
  eos = model.config.eos_token_id
  for start in range(0, len(texts), batch_size):
    chunk_ids, chunk_mask = ids[start:start + batch_size], mask[start:start + batch_size]
    real = len(chunk_ids)
    if real < batch_size:   # fill rows: one EOS each, decoded and dropped
      fill = batch_size - real
      chunk_ids = np.concatenate([chunk_ids, np.full((fill, max_source_length),
                                                     tokenizer.pad_id, np.int32)])
      chunk_mask = np.concatenate([chunk_mask, np.zeros((fill, max_source_length), np.int32)])
      chunk_ids[real:, 0], chunk_mask[real:, 0] = tokenizer.sep_id, 1
    decoded = np.asarray(decoding.generate(model, params, chunk_ids, chunk_mask,
                                           max_length=max_length, beam_size=beam_size,
                                           alpha=alpha))
    for row in decoded[:real]:
      kept = decoding.strip_eos(row, eos)
      generated += min(len(kept) + 1, max_length)
      outputs.append(tokenizer.decode(kept))
  return outputs, generated


def read_sources(path: str) -> list[str]:
  """One source per line (a TSV line contributes its first column)."""
  if not os.path.isfile(path):
    raise FlaxbertError(f"{path}: no such file")
  texts = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\n")
      if "\x00" in line:
        raise FlaxbertError(f"{path}:{number}: NUL byte in input")
      texts.append(line.split("\t", 1)[0])
  return texts


def write_lines(path: str, lines: Sequence[str]) -> None:
  """Atomically: a temp file next to `path`, then os.replace."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.abspath(path) + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(line.replace("\n", " ") + "\n" for line in lines)
  os.replace(tmp, path)


def predict_file(bundle_path: str, input_path: str, output_path: str, *, beam: int = 1,
                 alpha: float = 0.6, max_source_length: int = 128, max_length: int = 128,
                 batch_size: int = 64) -> int:
  """Translates each line of `input_path` into a line of `output_path`; returns the count."""
  from flaxbert import bundle as bundle_lib
  bundle = bundle_lib.load_encdec_bundle(bundle_path)
  texts = read_sources(input_path)
  outputs, _ = translate(bundle.model, bundle.params, bundle.tokenizer, texts,
                         max_source_length=max_source_length, max_length=max_length,
                         beam_size=beam, alpha=alpha, batch_size=batch_size)
  write_lines(output_path, outputs)
  return len(outputs)
