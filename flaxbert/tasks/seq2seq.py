"""Translating text with an encoder-decoder bundle: batches of sources -> decoded strings; the
files of `flaxbert predict/evaluate --task seq2seq`, read as `finetune seq2seq` reads them;
sacrebleu's corpus BLEU and chrF."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import sacrebleu

from flaxbert.data import readers
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
                                           alpha=alpha, num_tokens=tokenizer.vocab_size))
    for row in decoded[:real]:
      kept = decoding.strip_eos(row, eos)
      generated += min(len(kept) + 1, max_length)
      outputs.append(tokenizer.decode(kept))
  return outputs, generated


def read_texts(path: str) -> tuple[list[str], list[str] | None]:
  """(sources, targets) of a source<TAB>target TSV, read exactly as fine-tuning reads it
  (`readers.read_tsv`: a header row of column names skipped, blank lines skipped, every row
  two columns); (lines, None) for plain text, one source per line, every line kept so that
  outputs line up with inputs. The first non-blank line decides which it is."""
  lines = []
  for number, line in readers._lines(path):
    if "\x00" in line:
      raise FlaxbertError(f"{path}:{number}: NUL byte in input")
    lines.append(line)
  first = next((line for line in lines if line.strip()), "")
  if "\t" not in first:
    return [line.split("\t", 1)[0] for line in lines], None
  sources, targets = [], []
  for _, fields in readers.read_tsv(path, (2,)):
    sources.append(fields[0])
    targets.append(fields[1])
  return sources, targets


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """sacrebleu corpus BLEU and chrF (default settings: 13a tokenisation, chrF n=6 beta=2)."""
  return {"bleu": sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
          "chrf": sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score}


def read_references(path: str) -> list[str]:
  """The targets of a source<TAB>target TSV, or one reference per line of plain text."""
  sources, targets = read_texts(path)
  return targets if targets is not None else sources


def write_lines(path: str, lines: Sequence[str]) -> None:
  """Atomically: a temp file next to `path`, then os.replace."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.abspath(path) + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(line.replace("\n", " ") + "\n" for line in lines)
  os.replace(tmp, path)


# --- a file prepared for the model, its predictions, their scores --------------------------

class Seq2SeqInputs:
  """The sources of a TSV or plain-text file; predictions are one decoded string each.

  `settings` gives max_seq_length (source tokens), max_output_length, beam and alpha."""

  def __init__(self, tokenizer, settings, path: str, need_label: bool):
    self.tokenizer, self.settings = tokenizer, settings
    self.sources, self.targets = read_texts(path)
    if need_label and self.targets is None:
      raise FlaxbertError(f"{path}: expected source<TAB>target pairs")

  def translate(self, model, params, batch_size: int) -> list[str]:
    s = self.settings
    outputs, _ = translate(model, params, self.tokenizer, self.sources,
                           max_source_length=s.max_seq_length, max_length=s.max_output_length,
                           beam_size=s.beam, alpha=s.alpha, batch_size=batch_size)
    return outputs

  def score(self, predicted) -> dict[str, float]:
    return score(predicted, self.targets)

  def write(self, predicted, path: str) -> None:
    write_lines(path, predicted)


def score_files(predictions: str, gold: str | None) -> dict[str, float]:
  """BLEU and chrF of a `predict` output (one hypothesis per line) against the targets of
  `gold` (the source<TAB>target TSV, or one reference per line)."""
  if gold is None:
    raise FlaxbertError("seq2seq: pass the gold source<TAB>target TSV with --gold")
  hypotheses = [line for _, line in readers._lines(predictions)]
  references = read_references(gold)
  if len(hypotheses) != len(references):
    raise FlaxbertError(f"{predictions}: {len(hypotheses)} lines but {gold} has "
                        f"{len(references)} references")
  if not references:
    raise FlaxbertError(f"{gold}: no references")
  return score(hypotheses, references)
