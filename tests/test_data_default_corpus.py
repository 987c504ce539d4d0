"""The embedded default corpus: built from the running Python, deterministic, BERT format,
and enough on its own (no shared data) to train a tokenizer and make pretraining batches."""

import os

import numpy as np
import pytest

from flaxbert.data import pipeline
from flaxbert.data.default_corpus import default_corpus_documents, write_default_corpus
from flaxbert.data.tokenizer import train_sentencepiece


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_default_corpus(str(tmp_path_factory.mktemp("default")))


def test_bert_format_and_size(corpus):
  with open(corpus, encoding="utf-8") as f:
    text = f.read()
  documents = text.rstrip("\n").split("\n\n")
  assert len(documents) > 300
  assert len(text) > 500_000
  for document in documents:
    lines = document.split("\n")
    assert all(line.strip() == line and line for line in lines)


def test_deterministic_and_reused(corpus):
  with open(corpus, encoding="utf-8") as f:
    written = f.read()
  again = "\n\n".join("\n".join(d) for d in default_corpus_documents()) + "\n"
  assert written == again
  mtime = os.path.getmtime(corpus)
  assert write_default_corpus(os.path.dirname(corpus)) == corpus
  assert os.path.getmtime(corpus) == mtime


def test_pretraining_batches_from_default_corpus(corpus, tmp_path):
  tokenizer_dir = str(tmp_path / "tok")
  train_sentencepiece([corpus], 1000, tokenizer_dir, max_sentences=5000)
  batch = next(pipeline.pretraining_batches([corpus], tokenizer_dir, str(tmp_path / "data"),
                                            batch_size=4, seq_length=64, process_index=0,
                                            process_count=1))
  assert batch["input_ids"].shape == (4, 64)
  assert np.all(batch["masked_weights"].sum(1) >= 1)
