"""Intrinsic evaluation of word vectors, as gensim's KeyedVectors does it:

- similarity: Spearman's rho between human scores (a TSV: word, word, score; `#` lines are
  comments, as in WordSim-353's wordsim353.tsv) and the vectors' cosines; pairs with a word
  the vectors lack are counted and left out;
- analogies (`questions-words.txt`: `: section` lines, then `a b c d` meaning a:b = c:d):
  d is predicted as the vocabulary word, other than a, b and c, maximising
  3CosAdd  cos(x, b) - cos(x, a) + cos(x, c)   (Mikolov et al.), or
  3CosMul  cos'(x, b) cos'(x, c) / (cos'(x, a) + 0.001), cos' = (cos + 1) / 2
  (Levy and Goldberg 2014); accuracy per section and overall; questions with a word outside
  the vocabulary are counted and left out (gensim's default);
- nearest neighbours by cosine, and `a - b + c` expressions.
Words are matched case-insensitively (lower-cased on both sides), as gensim does by default.
"""

from __future__ import annotations

import re

import numpy as np
from scipy import stats

from flaxbert.errors import FlaxbertError, os_error_line
from flaxbert.wordvec.formats import Vectors

COSMUL_EPSILON = 1e-3
BLOCK = 512   # analogy questions scored against the vocabulary at once


def _unit(matrix):
  return matrix / np.maximum(np.linalg.norm(matrix, axis=-1, keepdims=True), 1e-12)


def _lines(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().splitlines()
  except OSError as e:
    raise FlaxbertError(os_error_line(e, path)) from None
  except UnicodeDecodeError:
    raise FlaxbertError(f"{path}: not UTF-8 text") from None


def _lower_index(vectors: Vectors) -> dict[str, int]:
  """lower-cased word -> row, the first (most frequent) spelling winning."""
  index = {}
  for i, w in enumerate(vectors.words):
    index.setdefault(w.lower(), i)
  return index


def similarity(vectors: Vectors, path: str) -> dict:
  index = _lower_index(vectors)
  unit = _unit(vectors.matrix)
  human, model, oov, total = [], [], 0, 0
  for n, line in enumerate(_lines(path), 1):
    if not line.strip() or line.startswith("#"):
      continue
    parts = line.split("\t") if "\t" in line else line.split()
    if len(parts) < 3:
      raise FlaxbertError(f"{path}:{n}: expected `word<TAB>word<TAB>score`")
    try:
      score = float(parts[2])
    except ValueError:
      raise FlaxbertError(f"{path}:{n}: {parts[2]!r} is not a score") from None
    total += 1
    a, b = index.get(parts[0].lower()), index.get(parts[1].lower())
    if a is None or b is None:
      oov += 1
      continue
    human.append(score)
    model.append(float(unit[a] @ unit[b]))
  if total == 0:
    raise FlaxbertError(f"{path}: holds no word pairs")
  rho = stats.spearmanr(human, model).statistic if len(human) > 1 else float("nan")
  pearson = stats.pearsonr(human, model).statistic if len(human) > 1 else float("nan")
  return {"spearman": float(rho), "pearson": float(pearson), "pairs": total,
          "oov_pairs": oov, "oov_ratio": oov / total}


def read_analogies(path: str) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
  sections: list = []
  for n, line in enumerate(_lines(path), 1):
    if not line.strip():
      continue
    if line.startswith(":"):
      sections.append((line[1:].strip(), []))
      continue
    words = line.lower().split()
    if len(words) != 4:
      raise FlaxbertError(f"{path}:{n}: expected four words `a b c d` (a:b = c:d)")
    if not sections:
      sections.append(("questions", []))
    sections[-1][1].append(tuple(words))
  if not any(q for _, q in sections):
    raise FlaxbertError(f"{path}: holds no analogy questions")
  return sections


def _predict(unit, a, b, c, method: str):
  """The predicted rows for question rows a, b, c (arrays), excluding a, b and c."""
  out = np.empty(len(a), np.int64)
  for s in range(0, len(a), BLOCK):
    sa, sb, sc = (unit[x[s:s + BLOCK]] @ unit.T for x in (a, b, c))
    if method == "3cosadd":
      scores = sb - sa + sc
    else:
      scores = ((sb + 1) / 2) * ((sc + 1) / 2) / ((sa + 1) / 2 + COSMUL_EPSILON)
    rows = np.arange(len(scores))
    for x in (a, b, c):
      scores[rows, x[s:s + BLOCK]] = -np.inf
    out[s:s + BLOCK] = scores.argmax(1)
  return out


def analogies(vectors: Vectors, path: str, methods=("3cosadd", "3cosmul")) -> dict:
  index = _lower_index(vectors)
  unit = _unit(vectors.matrix)
  result = {"sections": [], "questions": 0, "oov_questions": 0}
  correct_all = {m: 0 for m in methods}
  seen_all = 0
  for name, questions in read_analogies(path):
    ids = [[index.get(w) for w in q] for q in questions]
    known = np.array([q for q in ids if None not in q], np.int64).reshape(-1, 4)
    section = {"section": name, "questions": len(questions),
               "oov_questions": len(questions) - len(known), "seen": len(known)}
    for m in methods:
      hits = int((_predict(unit, known[:, 0], known[:, 1], known[:, 2], m)
                  == known[:, 3]).sum()) if len(known) else 0
      section[m] = hits / len(known) if len(known) else None
      correct_all[m] += hits
    seen_all += len(known)
    result["questions"] += len(questions)
    result["oov_questions"] += section["oov_questions"]
    result["sections"].append(section)
  result["seen"] = seen_all
  for m in methods:
    result[m] = correct_all[m] / seen_all if seen_all else None
  return result


def _vector_of(vectors: Vectors, word: str):
  v = vectors.vector(word)
  if v is None:
    i = _lower_index(vectors).get(word.lower())
    v = None if i is None else vectors.matrix[i]
  if v is None:
    raise FlaxbertError(f"{word!r} is not in the vectors' vocabulary")
  return v


def neighbors(vectors: Vectors, expression: str, k: int = 10) -> list[tuple[str, float]]:
  """The k words nearest by cosine to `word` or to `a - b + c` (any sum of +/- words; the
  words of the expression are left out of the answer)."""
  terms = re.findall(r"([+-]?)\s*([^\s+-][^\s]*)", expression.strip())
  if not terms:
    raise FlaxbertError(f"{expression!r}: give a word or an expression like "
                        "'paris - france + italy'")
  query = sum((-1 if sign == "-" else 1) * _unit(_vector_of(vectors, w)) for sign, w in terms)
  scores = _unit(vectors.matrix) @ _unit(query)
  index = _lower_index(vectors)
  for _, w in terms:
    for i in (vectors.index.get(w), index.get(w.lower())):
      if i is not None:
        scores[i] = -np.inf
  top = np.argsort(-scores)[:k]
  return [(vectors.words[i], float(scores[i])) for i in top]
