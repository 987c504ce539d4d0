"""Task metrics and I/O without a model: official SQuAD rules, span search, classification
metrics against sklearn, seqeval parity, and bad inputs named by file and line."""

import json

import numpy as np
import pytest

from flaxbert import cli
from flaxbert.errors import FlaxbertError
from flaxbert.tasks import classify, ner, squad


# --- SQuAD: hand-worked examples of the official normalisation ------------------------------

@pytest.mark.parametrize("text, normalized", [
    ("The Eiffel Tower", "eiffel tower"),          # lowercase, article removed
    ("  a   cat's\that! ", "cats hat"),             # punctuation, article, whitespace
    ("An apple, an orange.", "apple orange"),
    ("theater", "theater"),                        # "the" only as a whole word
    ("Dr. No (1962)", "dr no 1962"),
])
def test_normalize_answer(text, normalized):
  assert squad.normalize_answer(text) == normalized


def test_exact_match_and_f1_by_hand():
  assert squad.exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
  assert squad.exact_match("Eiffel", "Eiffel tower") == 0.0
  # pred {big, red, dog}, gold {red, dog}: P = 2/3, R = 1, F1 = 0.8
  assert squad.f1("a big red dog", "the red dog") == pytest.approx(0.8)
  # repeated tokens count with multiplicity: pred {red, red}, gold {red}: P 1/2 R 1 -> 2/3
  assert squad.f1("red red", "red") == pytest.approx(2 / 3)
  assert squad.f1("cat", "dog") == 0.0
  # best over gold answers; percent; a missing prediction scores 0
  gold = {"q1": ["red dog", "the big red dog"], "q2": ["Paris"], "q3": ["x"]}
  got = squad.score(gold, {"q1": "big red dog", "q2": "paris!"})
  assert got["exact_match"] == pytest.approx(100 * 2 / 3)
  assert got["f1"] == pytest.approx(100 * 2 / 3)
  assert got["missing"] == 1
  # v2.0: no gold answer means the answer "" is right and any text is wrong
  got = squad.score({"a": [], "b": []}, {"a": "", "b": "something"})
  assert got["exact_match"] == 50.0 and got["NoAns_f1"] == 50.0


def _windows():
  # Two windows over the context "red dog runs" (char spans 0-3, 4-7, 8-12); tokens 1..3.
  n = 5
  arrays = {"token_char_start": np.full((2, n), -1, np.int32),
            "token_char_end": np.full((2, n), -1, np.int32),
            "token_is_max_context": np.zeros((2, n), np.int32)}
  spans = [(0, 3), (4, 7), (8, 12)]
  for row in range(2):
    for t, (s, e) in enumerate(spans):
      arrays["token_char_start"][row, 1 + t], arrays["token_char_end"][row, 1 + t] = s, e
  arrays["token_is_max_context"][0, 1:3] = 1   # window 0 owns "red dog"
  arrays["token_is_max_context"][1, 3] = 1     # window 1 owns "runs"
  return arrays


def test_span_search_uses_max_context_and_length_limits():
  arrays = _windows()
  question = [{"id": "q", "context": "red dog runs"}]
  start = np.zeros((2, 5), np.float32)
  end = np.zeros((2, 5), np.float32)
  start[1, 3], end[1, 3] = 9, 9   # "runs" in window 1 (its max-context window)
  start[0, 3] = 20  # a start in window 0 where "runs" is not max context: ignored
  got = squad.best_answers(question, ["q", "q"], arrays, start, end)
  assert got == {"q": "runs"}
  start[0, 1], end[0, 2] = 10, 10  # "red dog" scores 20 > 18
  assert squad.best_answers(question, ["q", "q"], arrays, start, end) == {"q": "red dog"}
  assert squad.best_answers(question, ["q", "q"], arrays, start, end,
                            max_answer_length=1) == {"q": "runs"}
  # v2.0: [CLS] score (min over windows) 30 - best span 20 = 10 > threshold 5 -> no answer
  start[:, 0], end[:, 0] = 15, 15
  assert squad.best_answers(question, ["q", "q"], arrays, start, end,
                            null_threshold=5.0) == {"q": ""}
  assert squad.best_answers(question, ["q", "q"], arrays, start, end,
                            null_threshold=10.5) == {"q": "red dog"}


# --- classification metrics -----------------------------------------------------------------

def test_classification_metrics_match_sklearn():
  sklearn = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  names = np.array(["neg", "neu", "pos"])
  gold = names[rng.integers(0, 3, 200)]
  pred = np.where(rng.random(200) < 0.6, gold, names[rng.integers(0, 3, 200)])
  got = classify.classification_metrics(gold.tolist(), pred.tolist())
  assert got["accuracy"] == pytest.approx(sklearn.accuracy_score(gold, pred))
  assert got["macro_f1"] == pytest.approx(sklearn.f1_score(gold, pred, average="macro"))
  assert got["matthews"] == pytest.approx(sklearn.matthews_corrcoef(gold, pred))
  reg = classify.regression_metrics([1, 2, 3, 4], [1.5, 1.9, 3.5, 3.9])
  assert reg["pearson"] > 0.9 and reg["spearman"] == pytest.approx(1.0)
  assert classify.majority_baseline(["a", "a", "b"], ["a", "b"])["accuracy"] == 0.5


def test_ner_scores_equal_seqeval_and_file_round_trip(tmp_path):
  from seqeval.metrics import f1_score, precision_score, recall_score
  gold = [["B-person", "I-person", "O", "B-geo-loc"], ["O", "B-company"]]
  pred = [["B-person", "O", "O", "B-geo-loc"], ["B-company", "B-company"]]
  got = ner.entity_scores(gold, pred)
  assert got["f1"] == f1_score(gold, pred)
  assert got["precision"] == precision_score(gold, pred)
  assert got["recall"] == recall_score(gold, pred)
  path = tmp_path / "gold.conll"
  path.write_text("Ann\tB-person\nLee\tI-person\nin\tO\nRome\tB-geo-loc\n\n"
                  "at\tO\nIBM\tB-company\n", encoding="utf-8")
  sentences = ner.read_conll(str(path), need_tags=True)
  ner.write_predictions(str(tmp_path / "pred.conll"), sentences, pred)
  g, p = ner.read_predictions(str(tmp_path / "pred.conll"))
  assert (g, p) == (gold, pred)
  assert ner.read_predictions(str(tmp_path / "pred.conll"), str(path)) == (gold, pred)


# --- bad inputs: one line naming file and line ----------------------------------------------

def _error(tmp_path, capsys, args):
  rc = cli.main([str(a) for a in args])
  err = capsys.readouterr().err
  assert rc == 2, err
  assert err.startswith("flaxbert: error: ") and len(err.strip().splitlines()) == 1, err
  return err


def _ft(task, train, dev, tmp_path):
  return ["finetune", task, "--train", train, "--dev", dev, "--init", tmp_path / "nowhere",
          "--workdir", tmp_path / "run", "--quiet"]


def test_unknown_dev_label(tmp_path, capsys):
  (tmp_path / "t.tsv").write_text("sentence\tlabel\ngood\tpos\nbad\tneg\n")
  (tmp_path / "d.tsv").write_text("sentence\tlabel\nfine\tpos\nmeh\tneutral\n")
  err = _error(tmp_path, capsys, _ft("classify", tmp_path / "t.tsv", tmp_path / "d.tsv",
                                     tmp_path))
  assert f"{tmp_path / 'd.tsv'}:3: unknown label 'neutral'" in err


def test_missing_column(tmp_path, capsys):
  (tmp_path / "t.tsv").write_text("sentence1\tlabel\ngood\tpos\n")
  err = _error(tmp_path, capsys, _ft("classify", tmp_path / "t.tsv", tmp_path / "t.tsv",
                                     tmp_path))
  assert f"{tmp_path / 't.tsv'}:1: missing column 'sentence2'" in err
  (tmp_path / "u.tsv").write_text("sentence\tsentence1\nx\ty\n")
  err = _error(tmp_path, capsys, _ft("classify", tmp_path / "u.tsv", tmp_path / "u.tsv",
                                     tmp_path / "other"))
  assert "missing column" in err


def test_conll_line_without_tag(tmp_path, capsys):
  (tmp_path / "t.conll").write_text("Ann\tB-person\nLee\n\n")
  err = _error(tmp_path, capsys, _ft("ner", tmp_path / "t.conll", tmp_path / "t.conll",
                                     tmp_path))
  assert f"{tmp_path / 't.conll'}:2: expected 'token<TAB>tag'" in err


def test_qa_answer_start_mismatch(tmp_path, capsys):
  data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{
      "context": "A dog is a domestic animal.",
      "qas": [{"id": "q1", "question": "What is a dog?",
               "answers": [{"text": "a domestic animal", "answer_start": 9}]},
              {"id": "q2", "question": "What is a dog?",
               "answers": [{"text": "a domestic animal", "answer_start": 3}]}]}]}]}
  path = tmp_path / "t.json"
  path.write_text(json.dumps(data, indent=1))
  line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if '"q2"' in text)
  err = _error(tmp_path, capsys, _ft("qa", path, path, tmp_path))
  assert f"{path}:{line}: question 'q2': answer 'a domestic animal' does not match" in err


def test_read_table_without_header(tmp_path):
  (tmp_path / "p.tsv").write_text("a\tb\t1\nc\td\t0\n")
  table = classify.read_table(str(tmp_path / "p.tsv"), need_label=True)
  assert table.texts == (["a", "c"], ["b", "d"]) and table.column("label") == ["1", "0"]
  with pytest.raises(FlaxbertError, match=r"p.tsv:2: expected 3 tab-separated columns"):
    (tmp_path / "p.tsv").write_text("a\tb\t1\nc\t0\n")
    classify.read_table(str(tmp_path / "p.tsv"), need_label=True)
