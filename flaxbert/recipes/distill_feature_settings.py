"""The feature-loss settings of both distillations, `flaxbert distill` (recipes/distill.py)
and `flaxbert distill --objective mlm` (recipes/distill_mlm.py): their config fields
hidden_weight, attention_weight, relation_heads and layer_map, checked as flags (one line
each, with the temperature, alpha and student layers both share) and turned into training/distill_features.py's FeatureSettings for a teacher and
student pair."""

from __future__ import annotations

from flaxbert.errors import FlaxbertError
from flaxbert.training import distill_features, distill_losses


def check_kd_settings(cfg) -> None:
  """The settings both distillations share, as flags: temperature, alpha, the student's
  layers, and the feature terms (`check_features`)."""
  if cfg.temperature <= 0:
    raise FlaxbertError(f"--temperature {cfg.temperature} must be positive")
  if not 0.0 <= cfg.alpha <= 1.0:
    raise FlaxbertError(f"--alpha {cfg.alpha} must be in [0, 1]")
  if cfg.student_layers is not None and cfg.student_layers < 1:
    raise FlaxbertError("--student-layers must be positive")
  check_features(cfg)


def check_features(cfg) -> None:
  """The feature settings on their own (against the models: `feature_settings`)."""
  if cfg.hidden_weight < 0 or cfg.attention_weight < 0:
    raise FlaxbertError("--hidden-weight and --attention-weight must be at least 0")
  if cfg.relation_heads is not None:
    if cfg.attention_weight == 0:
      raise FlaxbertError("--relation-heads: the attention loss is off; give --attention-weight")
    if cfg.relation_heads < 1:
      raise FlaxbertError("--relation-heads must be positive")
  if cfg.layer_map is not None:
    if cfg.hidden_weight == 0:
      raise FlaxbertError("--layer-map: the hidden-state loss is off; give --hidden-weight")
    parse_layer_map(cfg.layer_map)


def parse_layer_map(text: str) -> tuple[tuple[int, int], ...]:
  """"0:0,1:2" -> ((0, 0), (1, 2))."""
  pairs = []
  for pair in text.split(","):
    student, colon, teacher = pair.partition(":")
    try:
      pairs.append((int(student), int(teacher)))
    except ValueError:
      raise FlaxbertError(f"--layer-map {text}: expected student:teacher pairs of hidden-state "
                          "indices, e.g. 0:0,1:2,2:4") from None
    if not colon or min(pairs[-1]) < 0:
      raise FlaxbertError(f"--layer-map {text}: {pair!r} is not a student:teacher pair of "
                          "indices 0 or more")
  return tuple(pairs)


def feature_settings(cfg, teacher, student) -> distill_features.FeatureSettings:
  """The feature terms of `cfg`, checked against the two models' shapes: one line, before
  any training, for what would otherwise fail inside the first step."""
  t, s = teacher.config, student.config
  layer_map = ()
  if cfg.hidden_weight > 0:
    layer_map = (parse_layer_map(cfg.layer_map) if cfg.layer_map is not None
                 else distill_losses.uniform_layer_map(s.num_layers, t.num_layers))
    for i, j in layer_map:
      if i > s.num_layers or j > t.num_layers:
        raise FlaxbertError(f"--layer-map: pair {i}:{j} is outside the student's hidden states "
                            f"0..{s.num_layers} or the teacher's 0..{t.num_layers}")
  if cfg.attention_weight > 0:
    widths = (t.num_heads * t.head_dim, s.num_heads * s.head_dim)
    if cfg.relation_heads is None and t.num_heads != s.num_heads:
      raise FlaxbertError(f"--attention-weight: the teacher has {t.num_heads} attention heads "
                          f"and the student {s.num_heads}; give --relation-heads R, a number "
                          f"that divides both attention widths ({widths[0]} and {widths[1]})")
    if cfg.relation_heads is not None and any(w % cfg.relation_heads for w in widths):
      raise FlaxbertError(f"--relation-heads {cfg.relation_heads} must divide both attention "
                          f"widths, the teacher's {widths[0]} and the student's {widths[1]}")
  return distill_features.FeatureSettings(
      hidden_weight=cfg.hidden_weight, attention_weight=cfg.attention_weight,
      layer_map=layer_map, relation_heads=cfg.relation_heads)
