"""Shared fixtures for the data tests: a helper module imported by test_data_*.py and
test_tokenizer.py (its name does not start with `test_`, so pytest does not collect it).

A small SentencePiece model trained once per session on a slice of the KJV corpus, and small
copies of the shipped datasets so every test prepares in well under a second.
"""

import itertools
import os

import pytest

from flaxbert.data.tokenizer import train_sentencepiece

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                            "data"))


def shared(*parts: str) -> str:
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.fail(f"shared test data missing: {path}")
  return path


def head_lines(src: str, dst: str, n: int) -> str:
  with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
    out.writelines(itertools.islice(f, n))
  return dst


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> str:
  """The first ~40 chapters of the KJV corpus (BERT format)."""
  return head_lines(shared("corpus", "kjv.txt"),
                    str(tmp_path_factory.mktemp("corpus") / "kjv_head.txt"), 1300)


@pytest.fixture(scope="session")
def spm_dir(tmp_path_factory, small_corpus) -> str:
  directory = str(tmp_path_factory.mktemp("spm"))
  train_sentencepiece([small_corpus, shared("sentiment", "dev.tsv"), shared("qa", "dev.json")],
                      800, directory, max_sentences=20000)
  return directory
