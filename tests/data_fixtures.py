"""Helpers for the data tests, imported by test_data_*.py and others (its name does not start
with `test_`, so pytest does not collect it): the shared data's paths and small copies of it.

The fixtures built from them (`small_corpus`, and `spm_dir`: a small SentencePiece model
trained on a slice of the KJV corpus) are in conftest.py, so that they are made once per
session; a session fixture imported into several test modules is made once per module.
"""

import itertools
import os

import pytest

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


# For test modules that still import the fixtures from here: each stands for conftest.py's.
@pytest.fixture(scope="session")
def small_corpus(small_corpus) -> str:
  return small_corpus


@pytest.fixture(scope="session")
def spm_dir(spm_dir) -> str:
  return spm_dir
