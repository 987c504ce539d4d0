"""The embedded default corpus: built from the running Python, deterministic, BERT format,
and enough on its own (no shared data) to train a tokenizer and make pretraining batches."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import flaxbert.data.default_corpus
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


_STANDALONE = """
import hashlib, importlib.util, sys
spec = importlib.util.spec_from_file_location("default_corpus", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
text = "\\n\\n".join("\\n".join(d) for d in module.default_corpus_documents()) + "\\n"
outside = sorted({name.split(".")[0] for name in sys.modules} - set(sys.stdlib_module_names)
                 - {"__main__", "default_corpus"})
# sysconfig's generated build data lives in the standard library directory but is unlisted.
outside = [name for name in outside if not name.startswith("_sysconfigdata")]
print(hashlib.sha256(text.encode()).hexdigest(), ",".join(outside))
"""


def test_needs_only_the_standard_library_and_is_the_same_in_another_process(corpus):
  """Run in a fresh isolated interpreter without site-packages (-I -S) and another hash seed:
  nothing outside the standard library is imported, and the text is identical."""
  out = subprocess.run([sys.executable, "-I", "-S", "-c", _STANDALONE,
                        flaxbert.data.default_corpus.__file__],
                       capture_output=True, text=True, check=True).stdout.split()
  with open(corpus, "rb") as f:
    assert out[0] == hashlib.sha256(f.read()).hexdigest()
  assert len(out) == 1, f"non-stdlib modules imported: {out[1]}"


def test_pretraining_batches_from_default_corpus(corpus, tmp_path):
  tokenizer_dir = str(tmp_path / "tok")
  train_sentencepiece([corpus], 1000, tokenizer_dir, max_sentences=5000)
  iterator = pipeline.pretraining_batches([corpus], tokenizer_dir, str(tmp_path / "data"),
                                          batch_size=32, seq_length=128, process_index=0,
                                          process_count=1)
  # Enough for a tiny BERT's few hundred steps at seq 128: 300 steps of 32 sequences are
  # under three epochs (each epoch gets fresh masks). Python 3.11 gives about 5,500 pairs,
  # 3.12 about 5% fewer (its text is 1.41 MB against 1.47 MB).
  assert iterator.num_records >= 4_000
  batch = next(iterator)
  assert batch["input_ids"].shape == (32, 128)
  assert batch["input_mask"].sum() > 32 * 100   # sequences are filled, not mostly padding
  assert np.all(batch["masked_weights"].sum(1) >= 1)
