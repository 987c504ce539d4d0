"""The embedded default pretraining corpus: English prose that ships with every Python.

Sources, gathered at run time from the running interpreter (nothing is bundled):
  - `pydoc_data.topics`: the language reference text behind `help("topic")`;
  - docstrings of the standard library's pure-Python modules, read with `ast` (never
    imported: importing `antigravity` opens a browser, `this` prints).
Each topic and each module is one document; paragraphs are split into sentences, one per
line, documents separated by a blank line (BERT's format). Indented paragraphs (code,
doctests, tables) are left out. Order is sorted by topic and module path, so the corpus is
identical on every run of the same Python version (it differs between versions).
"""

from __future__ import annotations

import ast
import logging
import os
import re
import sys
import sysconfig
import warnings
from typing import Iterator

log = logging.getLogger("flaxbert.data")

# Test suites and tool packages hold docstrings that are fixtures or GUI help, not prose.
_SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "turtledemo", "site-packages",
              "dist-packages", "__pycache__", "lib2to3", "ensurepip", "pydoc_data", "encodings"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_MIN_WORDS = 3
_RULE = re.compile(r"[*=~^#-]{3,}")   # reST heading underlines


def _sentences(text: str) -> list[str]:
  """Sentences of the prose paragraphs of `text`, whitespace collapsed."""
  sentences = []
  for paragraph in re.split(r"\n\s*\n", text):
    lines = [line for line in paragraph.splitlines() if line.strip()]
    if not lines or any(line[:1].isspace() for line in lines):
      continue   # indented: code, doctest, table or a list continuation
    prose = " ".join(_RULE.sub(" ", " ".join(lines)).split())
    if prose.startswith(">>>") or len(prose.split()) < _MIN_WORDS:
      continue
    sentences += [s for s in _SENTENCE_END.split(prose) if len(s.split()) >= _MIN_WORDS]
  return sentences


def _topic_documents() -> Iterator[list[str]]:
  try:
    from pydoc_data.topics import topics
  except ImportError:   # some distributions strip pydoc_data; docstrings still remain
    log.warning("pydoc_data is missing from this Python; the default corpus uses docstrings only")
    return
  for name in sorted(topics):
    document = _sentences(topics[name])
    if document:
      yield document


def _stdlib_files() -> list[str]:
  root = sysconfig.get_paths()["stdlib"]
  files = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS)
    files += [os.path.join(directory, n) for n in sorted(names) if n.endswith(".py")]
  return sorted(files)


def _docstring_documents() -> Iterator[list[str]]:
  for path in _stdlib_files():
    try:
      with open(path, encoding="utf-8") as f:
        with warnings.catch_warnings():
          warnings.simplefilter("ignore")   # invalid escape sequences in old modules
          tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue   # a few stdlib files are deliberately not valid Python
    document = []
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        docstring = ast.get_docstring(node)
        if docstring:
          document += _sentences(docstring)
    if document:
      yield document


def default_corpus_documents() -> Iterator[list[str]]:
  """Documents (lists of sentences) of the default corpus, in a fixed order."""
  yield from _topic_documents()
  yield from _docstring_documents()


def write_default_corpus(directory: str) -> str:
  """Writes the corpus once per Python version to `<directory>/python-X.Y-corpus.txt` and
  returns the path; later calls reuse the file."""
  path = os.path.join(directory, f"python-{sys.version_info[0]}.{sys.version_info[1]}-corpus.txt")
  if os.path.isfile(path):
    return path
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n\n".join("\n".join(document) for document in default_corpus_documents()))
    f.write("\n")
  os.replace(tmp, path)   # atomic: a killed run never leaves half a corpus behind
  return path
