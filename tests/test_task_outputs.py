"""What predictions carry besides labels, without a model: classify probabilities and
confusion matrices (against sklearn), NER entity spans and per-type scores (against seqeval),
SQuAD n-best answers, null odds and evaluate-v2.0's best-threshold search worked by hand."""

import json

import numpy as np
import pytest

from conftest import call_cli, write_vocab
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.tasks import classify, ner, squad


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  directory = tmp_path_factory.mktemp("vocab")
  write_vocab(directory / "vocab.txt", 300)
  return load_tokenizer(str(directory))


# --- classify ---------------------------------------------------------------------------------

def test_confusion_matrix_and_per_class_match_sklearn():
  from sklearn import metrics   # installed with seqeval, which needs it
  rng = np.random.default_rng(0)
  names = np.array(["neg", "neu", "pos", "mixed"])
  gold = names[rng.integers(0, 3, 300)]                 # "mixed" is only ever predicted
  pred = np.where(rng.random(300) < 0.5, gold, names[rng.integers(0, 4, 300)])
  got = classify.classification_metrics(gold.tolist(), pred.tolist())
  labels = ["mixed", "neg", "neu", "pos"]
  assert got["confusion_matrix"] == {
      "labels": labels, "matrix": metrics.confusion_matrix(gold, pred, labels=labels).tolist()}
  report = metrics.classification_report(gold, pred, labels=labels, output_dict=True,
                                         zero_division=0)
  assert set(got["per_class"]) == set(labels)
  for label in labels:
    want = report[label]
    assert got["per_class"][label] == pytest.approx(
        {"precision": want["precision"], "recall": want["recall"], "f1": want["f1-score"],
         "support": want["support"]}, abs=1e-12)
  assert got["per_class"]["mixed"]["support"] == 0 and got["per_class"]["mixed"]["recall"] == 0
  assert np.mean([c["f1"] for c in got["per_class"].values()]) == pytest.approx(got["macro_f1"])
  # Plain Python values: results.json takes them as they are.
  json.dumps(got)
  assert all(type(x) is int for row in got["confusion_matrix"]["matrix"] for x in row)


def test_probability_columns_and_evaluate(tmp_path, tokenizer):
  """Probabilities are the softmax of the logits, in prob_<label> columns after the
  prediction; a headerless input gets a header naming them; evaluate reads the prediction
  column by name and gives the same scores as before the extra columns."""
  labels = ["neg", "pos"]
  logits = np.array([[2.0, -1.0], [0.5, 0.25], [-3.0, 4.0]], np.float32)
  for header in ("", "sentence\tlabel\n"):
    path = tmp_path / "in.tsv"
    path.write_text(header + "good film\tpos\nmeh\tneg\ngreat\tpos\n", encoding="utf-8")
    inputs = classify.ClassifyInputs(tokenizer, 16, labels, str(path), need_label=True)
    predicted = inputs.predictions({"logits": logits})
    assert list(predicted) == ["neg", "neg", "pos"]
    e = np.exp(logits.astype(np.float64))
    np.testing.assert_allclose(predicted.probabilities, e / e.sum(1, keepdims=True), rtol=1e-12)
    out = tmp_path / "pred.tsv"
    inputs.write(predicted, str(out))
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sentence\tlabel\tprediction\tprob_neg\tprob_pos"
    assert lines[1].split("\t")[:3] == ["good film", "pos", "neg"]
    assert float(lines[1].split("\t")[3]) == pytest.approx(e[0, 0] / e[0].sum(), rel=1e-5)
    rc, stdout, err = call_cli("evaluate", "--task", "classify", "--predictions", out)
    assert rc == 0, err
    assert json.loads(stdout) == classify.classification_metrics(["pos", "neg", "pos"],
                                                                 ["neg", "neg", "pos"])
    assert json.loads(stdout) == inputs.score(predicted)
  # A file from before the probability columns (no header: the last column is predicted).
  (tmp_path / "old.tsv").write_text("good\tpos\tpos\nbad\tneg\tpos\n", encoding="utf-8")
  assert classify.score_files(str(tmp_path / "old.tsv"), None)["accuracy"] == 0.5


# --- ner --------------------------------------------------------------------------------------

def test_entity_spans_by_hand():
  words = ["Ann", "Lee", "visited", "New", "York", "."]
  tags = ["B-person", "I-person", "O", "B-geo-loc", "I-geo-loc", "O"]
  probabilities = [0.9, 0.7, 0.99, 0.6, 0.8, 0.95]
  spans = ner.entity_spans(words, tags, probabilities)
  # "Ann Lee visited New York ." : Ann Lee = [0, 7), New York = [16, 24)
  assert spans == [
      {"type": "person", "text": "Ann Lee", "start": 0, "end": 7, "score": pytest.approx(0.8)},
      {"type": "geo-loc", "text": "New York", "start": 16, "end": 24,
       "score": pytest.approx(0.7)}]
  # Offsets into a text with other whitespace; an I- without B- starts an entity (conlleval)
  text = "  Ann\tLee visited\n New   York ."
  spans = ner.entity_spans(text.split(), ["I-person", "I-person", "O", "B-geo-loc",
                                          "B-geo-loc", "O"], probabilities, text)
  assert [(s["text"], s["start"], s["end"]) for s in spans] == [
      ("Ann\tLee", 2, 9), ("New", 19, 22), ("York", 25, 29)]
  assert all(text[s["start"]:s["end"]] == s["text"] for s in spans)
  assert spans[1]["score"] == pytest.approx(0.6)


def test_ner_per_type_is_seqeval_and_spans_file(tmp_path, tokenizer):
  from seqeval.metrics import classification_report
  gold = [["B-person", "I-person", "O", "B-geo-loc"], ["O", "B-company"], ["O"]]
  pred = [["B-person", "O", "O", "B-geo-loc"], ["B-company", "B-company"], ["B-person"]]
  got = ner.entity_scores(gold, pred)
  report = classification_report(gold, pred, output_dict=True, zero_division=0)
  assert got["per_class"] == {
      kind: {"precision": pytest.approx(r["precision"]), "recall": pytest.approx(r["recall"]),
             "f1": pytest.approx(r["f1-score"]), "support": int(r["support"])}
      for kind, r in report.items() if kind in ("person", "geo-loc", "company")}
  assert set(got["per_class"]) == {"person", "geo-loc", "company"}
  assert got["per_class"]["person"]["support"] == 1
  json.dumps(got)
  assert ner.entity_scores([["O"]], [["O"]])["per_class"] == {}
  # The spans file beside the CoNLL predictions: one line per sentence.
  path = tmp_path / "in.conll"
  path.write_text("Ann\tB-person\nLee\tI-person\nin\tO\nRome\tB-geo-loc\n\n"
                  "at\tO\nIBM\tB-company\n\nok\tO\n", encoding="utf-8")
  predicted = ner.ScoredTags(pred, [[0.5, 0.9, 0.8, 0.75], [0.6, 0.4], [0.3]])
  inputs = ner.NerInputs(tokenizer, 16, ["O", "B-person"], str(path), need_label=True)
  inputs.write(predicted, str(tmp_path / "pred.conll"))
  lines = [json.loads(x) for x in open(tmp_path / "pred.conll.spans.jsonl", encoding="utf-8")]
  assert [x["line"] for x in lines] == [1, 6, 9]
  assert lines[0] == {"line": 1, "text": "Ann Lee in Rome", "entities": [
      {"type": "person", "text": "Ann", "start": 0, "end": 3, "score": 0.5},
      {"type": "geo-loc", "text": "Rome", "start": 11, "end": 15, "score": 0.75}]}
  assert [e["text"] for e in lines[1]["entities"]] == ["at", "IBM"]
  assert ner.read_predictions(str(tmp_path / "pred.conll")) == (gold, pred)


# --- qa ---------------------------------------------------------------------------------------

def test_best_threshold_by_hand():
  """evaluate-v2.0.py's find_best_thresh on four questions, worked out by hand.

  q1 (answer "red dog") predicted "red dog": EM 1, F1 1;  q2 ("Paris") predicted "Paris France":
  EM 0, F1 2/3;  q3, q4 unanswerable, predicted "x" and "". Null odds -3, -1, 0.5, 2. Start
  with all answered "": the two unanswerable right (2). In order of odds: answering q1 adds
  1 (3, at -3); q2 adds 0 (EM) or 2/3 (F1: 3.67, at -1); q3 loses 1; q4 (empty) changes
  nothing. So best EM 3/4 at -3 and best F1 3.67/4 at -1."""
  gold = {"q1": ["red dog"], "q2": ["Paris"], "q3": [], "q4": []}
  predictions = {"q1": "red dog", "q2": "Paris France", "q3": "x", "q4": ""}
  odds = {"q1": -3.0, "q2": -1.0, "q3": 0.5, "q4": 2.0}
  got = squad.score(gold, predictions, odds)
  assert got["exact_match"] == 50.0 and got["f1"] == pytest.approx(100 * (3 - 1 / 3) / 4)
  assert got["best_exact"] == 75.0 and got["best_exact_thresh"] == -3.0
  assert got["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4) and got["best_f1_thresh"] == -1.0
  assert (got["HasAns_total"], got["NoAns_total"]) == (2, 2)
  # The threshold found does what it says: answering "" above it scores best_f1.
  at = {q: "" if odds[q] > got["best_f1_thresh"] else p for q, p in predictions.items()}
  assert squad.score(gold, at)["f1"] == pytest.approx(got["best_f1"])
  # Every answer wrong: answering none is best, threshold 0.0 as the official script.
  wrong = {"q1": "cat", "q2": "Rome", "q3": "x", "q4": "y"}
  got = squad.score(gold, wrong, odds)
  assert (got["best_exact"], got["best_exact_thresh"], got["best_f1"]) == (50.0, 0.0, 50.0)
  # As the official script, questions without a prediction are left out of best_*.
  got = squad.score(gold, {"q1": "red dog", "q3": ""}, odds)
  assert got["best_exact"] == 100.0 * 3 / 2 and got["missing"] == 2


def test_nbest_and_null_odds_by_hand(tmp_path):
  # One window over "red dog runs" (tokens 1..3 at chars 0-3, 4-7, 8-12), [CLS] at 0,
  # question tokens 4 and padding 5-6 with large logits that must not crowd out the context.
  arrays = {"token_char_start": np.array([[-1, 0, 4, 8, -1, -1, -1]], np.int32),
            "token_char_end": np.array([[-1, 3, 7, 12, -1, -1, -1]], np.int32),
            "token_is_max_context": np.array([[0, 1, 1, 1, 0, 0, 0]], np.int32)}
  start = np.array([[1.0, 3.0, 0.0, 2.0, 50, 50, 50]], np.float32)
  end = np.array([[0.5, 0.0, 4.0, 1.0, 50, 50, 50]], np.float32)
  question = [{"id": "q", "context": "red dog runs"}]
  got = squad.best_answers(question, ["q"], arrays, start, end, n_best=2)
  # n_best 2 starts {red 3, runs 2} x ends {dog 4, runs 1}: red..dog 7, red..runs 4,
  # runs..runs 3; the two best distinct texts are kept.
  assert dict(got) == {"q": "red dog"} and got.null_odds is None
  entries = got.nbest["q"]
  assert [(e["text"], e["start"], e["end"], e["start_logit"], e["end_logit"])
          for e in entries] == [("red dog", 0, 7, 3.0, 4.0), ("red dog runs", 0, 12, 3.0, 1.0)]
  e = np.exp([7.0, 4.0])
  assert [x["probability"] for x in entries] == pytest.approx((e / e.sum()).tolist())
  # v2.0: the null answer ([CLS] 1.5) joins the list; odds = 1.5 - 7 = -5.5.
  got = squad.best_answers(question, ["q"], arrays, start, end, n_best=2, null_threshold=-6.0)
  assert got == {"q": ""} and got.null_odds == {"q": -5.5}
  assert [x["text"] for x in got.nbest["q"]] == ["red dog", "red dog runs", ""]
  assert got.nbest["q"][2]["start_logit"] == 1.0 and got.nbest["q"][2]["end_logit"] == 0.5
  assert sum(x["probability"] for x in got.nbest["q"]) == pytest.approx(1.0)
  assert squad.best_answers(question, ["q"], arrays, start, end,
                            null_threshold=-5.5) == {"q": "red dog"}   # not above: answered
  squad.write_predictions(str(tmp_path / "pred.json"), got)
  assert json.load(open(tmp_path / "pred.json")) == {"q": ""}
  assert json.load(open(tmp_path / "null_odds.json")) == {"q": -5.5}
  assert json.load(open(tmp_path / "nbest_predictions.json")) == got.nbest


def test_evaluate_null_odds_file(tmp_path):
  gold = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{
      "context": "The red dog runs in Paris.",
      "qas": [{"id": "q1", "question": "Which dog?", "is_impossible": False,
               "answers": [{"text": "red dog", "answer_start": 4}]},
              {"id": "q2", "question": "Who flies?", "is_impossible": True, "answers": []}]}]}]}
  (tmp_path / "gold.json").write_text(json.dumps(gold))
  (tmp_path / "pred.json").write_text(json.dumps({"q1": "red dog", "q2": "Paris"}))
  (tmp_path / "odds.json").write_text(json.dumps({"q1": -2.0, "q2": 1.0}))
  args = ["evaluate", "--task", "qa", "--predictions", tmp_path / "pred.json", "--gold",
          tmp_path / "gold.json"]
  rc, out, err = call_cli(*args, "--null-odds", tmp_path / "odds.json")
  assert rc == 0, err
  got = json.loads(out)
  assert got["exact_match"] == 50.0
  assert (got["best_exact"], got["best_exact_thresh"], got["best_f1"], got["best_f1_thresh"]) \
      == (100.0, -2.0, 100.0, -2.0)
  rc, out, err = call_cli(*args)
  assert rc == 0 and "best_f1" not in json.loads(out)
  (tmp_path / "bad.json").write_text(json.dumps({"q1": "high"}))
  rc, out, err = call_cli(*args, "--null-odds", tmp_path / "bad.json")
  assert rc == 2 and len(err.strip().splitlines()) == 1
  assert f"{tmp_path / 'bad.json'}: expected a JSON object question id -> null odds" in err
  rc, out, err = call_cli("evaluate", "--task", "ner", "--predictions", tmp_path / "pred.json",
                          "--null-odds", tmp_path / "odds.json")
  assert rc == 2 and "--null-odds applies to qa only, not 'ner'" in err
  with pytest.raises(FlaxbertError, match="no such file"):
    squad.read_null_odds(str(tmp_path / "missing.json"))
