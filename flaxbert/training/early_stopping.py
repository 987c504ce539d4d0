"""Early stopping as transformers' EarlyStoppingCallback: a run stops once `patience`
evaluations in a row have not beaten the best score so far (strictly; higher or lower is
better by the metric).

Every evaluation's score is kept by step in one JSON file (written by process 0, atomically),
so a resumed run counts on from where the killed one was, and a run that stopped stays
stopped when its command is run again. The file is kept in step with the checkpoints as
metrics.jsonl is: an evaluation replaces those recorded at its step or after it (written by a
run killed after its last checkpoint, and repeated identically by the exact resume).
"""

from __future__ import annotations

import dataclasses
import os

from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, write_json


def improves(score: float, best: float, higher_is_better: bool = True) -> bool:
  """Whether `score` beats `best` (strictly, as transformers compares them)."""
  return score > best if higher_is_better else score < best


@dataclasses.dataclass
class EarlyStopping:
  path: str
  metric: str
  patience: int
  higher_is_better: bool = True
  write: bool = True                  # process 0 writes the file; every process keeps count
  evaluations: list[tuple[int, float]] = dataclasses.field(default_factory=list)

  @classmethod
  def load(cls, path: str, metric: str, patience: int, higher_is_better: bool = True,
           write: bool = True) -> "EarlyStopping":
    """The record at `path` (a run's earlier evaluations), or a new one."""
    evaluations = []
    if os.path.isfile(path):
      try:
        evaluations = [(int(step), float(score))
                       for step, score in read_json(path).get("evaluations", [])]
      except (TypeError, ValueError):
        raise FlaxbertError(f"{path}: \"evaluations\" must be a list of [step, score] "
                            "pairs") from None
    return cls(path, metric, patience, higher_is_better, write, evaluations)

  def record(self, step: int, score: float) -> None:
    self.evaluations = [e for e in self.evaluations if e[0] < step] + [(step, score)]
    if self.write:
      write_json(self.path, {"metric": self.metric, "patience": self.patience,
                             "greater_is_better": self.higher_is_better,
                             "evaluations": [list(e) for e in self.evaluations],
                             "stopped_at": self.stopped_at(), "reason": self.reason()})

  def _walk(self):
    """(step, best step, best score, evaluations since the best) after each evaluation."""
    best_step, best, waited = None, None, 0
    for step, score in self.evaluations:
      if best is None or improves(score, best, self.higher_is_better):
        best_step, best, waited = step, score, 0
      else:
        waited += 1
      yield step, best_step, best, waited

  def stopped_at(self) -> int | None:
    """The step of the evaluation that used up the patience, if one did."""
    return next((step for step, _, _, waited in self._walk() if waited >= self.patience), None)

  def reason(self) -> str | None:
    """Why the run stopped (one line), if it did."""
    for step, best_step, best, waited in self._walk():
      if waited >= self.patience:
        return (f"dev {self.metric} has not improved on {best:.6g} (step {best_step}) in "
                f"{waited} evaluation{'s' if waited > 1 else ''} (--early-stopping-patience "
                f"{self.patience})")
    return None
