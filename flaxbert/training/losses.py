"""The losses of every recipe, as weighted sums in float32.

Each function returns per-batch *sums* (loss, hits, weight): sums add across microbatches,
devices and evaluation batches, and are divided by their totals only at the end, so
accumulated, sharded and evaluated losses all equal the loss of one large batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits, labels, weights):
  """(sum of weighted NLL, sum of weighted correct) in float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(correct * weights)


def _nll(logits, labels):
  """Per-position NLL in float32; labels < 0 (ignored positions) read class 0."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  safe = jnp.maximum(labels, 0).astype(jnp.int32)
  return -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]


# --- BERT pretraining: MLM + NSP -------------------------------------------------------------

PRETRAINING_SUM_KEYS = ("mlm_loss", "mlm_hits", "mlm_weight", "nsp_loss", "nsp_hits",
                        "nsp_weight")


def nsp_weights(batch):
  """Per-NSP-prediction weight: packed rows' filled slots, or each example's weight."""
  if "nsp_weights" in batch:
    return batch["nsp_weights"].astype(jnp.float32)
  return batch.get("example_weight", jnp.ones(batch["nsp_label"].shape, jnp.float32)
                   ).astype(jnp.float32)


def pretraining_sums(outputs, batch):
  """Per-batch sums of MLM and NSP losses and hits, and their weights."""
  mlm_w = batch["masked_weights"].astype(jnp.float32)
  nsp_w = nsp_weights(batch)
  mlm_loss, mlm_hits = cross_entropy_sums(outputs["mlm_logits"], batch["masked_ids"], mlm_w)
  nsp_loss, nsp_hits = cross_entropy_sums(outputs["nsp_logits"], batch["nsp_label"], nsp_w)
  return {"mlm_loss": mlm_loss, "mlm_hits": mlm_hits, "mlm_weight": jnp.sum(mlm_w),
          "nsp_loss": nsp_loss, "nsp_hits": nsp_hits, "nsp_weight": jnp.sum(nsp_w)}


def pretraining_totals(batch):
  """The global batch's normalisers: masked-token weight (MLM), prediction count (NSP)."""
  return {"mlm": jnp.maximum(jnp.sum(batch["masked_weights"].astype(jnp.float32)), 1.0),
          "nsp": jnp.maximum(jnp.sum(nsp_weights(batch)), 1.0)}


def pretraining_loss(sums, totals):
  return sums["mlm_loss"] / totals["mlm"] + sums["nsp_loss"] / totals["nsp"]


def summarise_pretraining(sums):
  mlm_w = jnp.maximum(sums["mlm_weight"], 1.0)
  nsp_w = jnp.maximum(sums["nsp_weight"], 1.0)
  mlm_loss, nsp_loss = sums["mlm_loss"] / mlm_w, sums["nsp_loss"] / nsp_w
  return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss,
          "mlm_accuracy": sums["mlm_hits"] / mlm_w, "nsp_loss": nsp_loss,
          "nsp_accuracy": sums["nsp_hits"] / nsp_w}


# --- fine-tuning heads -----------------------------------------------------------------------

def _example_weight(batch, n):
  weight = batch.get("example_weight")
  return jnp.ones((n,), jnp.float32) if weight is None else weight.astype(jnp.float32)


def head_weights(head: str, batch):
  """Per-example (per-token for tagging) weights: 0 on padding rows and ignored labels."""
  if head == "tagging":
    labels = batch["labels"]
    w = (labels >= 0).astype(jnp.float32)
    return w * _example_weight(batch, labels.shape[0])[:, None]
  key = "start_position" if head == "span_qa" else "label"
  return _example_weight(batch, batch[key].shape[0])


def head_sums(head: str, outputs, batch):
  """Sums of weighted loss, weight and hits of a fine-tuning head."""
  w = head_weights(head, batch)
  if head == "regression":
    err = outputs["logits"].astype(jnp.float32)[:, 0] - batch["label"].astype(jnp.float32)
    return {"loss": jnp.sum(w * err * err), "weight": jnp.sum(w), "hits": jnp.zeros(())}
  if head in ("classification", "tagging"):
    key = "label" if head == "classification" else "labels"
    logits = outputs["logits"].astype(jnp.float32)
    labels = batch[key]
    hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(w * _nll(logits, labels.astype(jnp.int32))), "weight": jnp.sum(w),
            "hits": jnp.sum(w * hits)}
  if head == "span_qa":
    start = outputs["start_logits"].astype(jnp.float32)
    end = outputs["end_logits"].astype(jnp.float32)
    nll = 0.5 * (_nll(start, batch["start_position"]) + _nll(end, batch["end_position"]))
    hits = ((jnp.argmax(start, -1) == batch["start_position"])
            & (jnp.argmax(end, -1) == batch["end_position"])).astype(jnp.float32)
    return {"loss": jnp.sum(w * nll), "weight": jnp.sum(w), "hits": jnp.sum(w * hits)}
  raise ValueError(f"unknown fine-tuning head {head!r}")


def summarise_head(head: str):
  def summarise(sums):
    weight = jnp.maximum(sums["weight"], 1.0)
    metrics = {"loss": sums["loss"] / weight}
    if head != "regression":
      metrics["train_accuracy"] = sums["hits"] / weight
    return metrics
  return summarise


# --- knowledge distillation on a head's outputs ----------------------------------------------
#
# loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
#        + (1 - alpha) * the head's cross-entropy on the hard labels,
# each term normalised by its own global total: the KD term over every position the teacher
# speaks for, the hard term over the labelled ones only (an unlabelled example adds to KD
# alone). T^2 keeps the KD gradients' scale independent of T (Hinton et al. 2015). With
# alpha = 0 the loss is the fine-tuning loss (head_sums) exactly. Regression heads have no
# distribution: their KD term is the squared difference to the teacher's value.

# The batch field of each head's hard label (its leading axis is the examples').
_LABEL_KEY = {"span_qa": "start_position", "classification": "label", "regression": "label",
              "tagging": "labels"}


def _labelled(head: str, batch):
  """head_weights with unlabelled examples (label -1) weighing 0; tagging labels already do."""
  return head_weights(head, {**batch, "example_weight": _hard_example_weight(head, batch)})


def _kl(teacher_logits, student_logits, temperature: float):
  """T^2 * KL(softmax(t/T) || softmax(s/T)) over the last axis, in float32."""
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def _mask_padding(logits_BxL, input_mask_BxL):
  """Start/end logits with padding positions out of the distribution."""
  return jnp.where(input_mask_BxL > 0, logits_BxL.astype(jnp.float32), -1e9)


def distill_weights(head: str, batch):
  """Per-example (tagging: per-token) weights of the KD term: every real example; for
  tagging every word's first sub-token, which `kd_token_mask` marks when labels are absent."""
  if head == "tagging":
    mask = batch["kd_token_mask"] if "kd_token_mask" in batch else (batch["labels"] >= 0)
    return mask.astype(jnp.float32) * _example_weight(batch, mask.shape[0])[:, None]
  return _example_weight(batch, batch[_LABEL_KEY[head]].shape[0])


def distill_sums(head: str, student, teacher, batch, temperature: float):
  """Sums of the KD term and its weight, and the head's hard-label sums (head_sums) over the
  labelled examples: student and teacher are the two models' output dicts."""
  w_kd = distill_weights(head, batch)
  if head == "regression":
    diff = (student["logits"].astype(jnp.float32)[:, 0]
            - teacher["logits"].astype(jnp.float32)[:, 0])
    kd = diff * diff
  elif head == "span_qa":
    mask = batch["input_mask"]
    kd = 0.5 * sum(_kl(_mask_padding(teacher[k], mask), _mask_padding(student[k], mask),
                       temperature) for k in ("start_logits", "end_logits"))
  else:
    kd = _kl(teacher["logits"], student["logits"], temperature)
  labelled = {**batch, "example_weight": _hard_example_weight(head, batch)}
  if head == "regression":   # NaN marks an unlabelled value: weight 0, and no NaN gradient
    labelled["label"] = jnp.nan_to_num(batch["label"].astype(jnp.float32))
  hard = head_sums(head, student, labelled)
  return {"kd_loss": jnp.sum(w_kd * kd), "kd_weight": jnp.sum(w_kd), **hard}


def _hard_example_weight(head: str, batch):
  """The example weights of the hard-label term: 0 for unlabelled examples (label -1; a
  regression's NaN). Tagging's unlabelled tokens are -1 already (head_weights)."""
  key = _LABEL_KEY[head]
  w = _example_weight(batch, batch[key].shape[0])
  if head in ("classification", "span_qa"):
    w = w * (batch[key] >= 0).astype(jnp.float32)
  elif head == "regression":
    w = w * jnp.isfinite(batch[key]).astype(jnp.float32)
  return w


def distill_totals(head: str, batch):
  return {"kd": jnp.maximum(jnp.sum(distill_weights(head, batch)), 1.0),
          "hard": jnp.maximum(jnp.sum(_labelled(head, batch)), 1.0)}


def distill_loss(alpha: float):
  def loss(sums, totals):
    return alpha * sums["kd_loss"] / totals["kd"] + (1.0 - alpha) * sums["loss"] / totals["hard"]
  return loss


def summarise_distill(head: str, alpha: float):
  """loss (the objective, as each part's running mean), kd_loss, hard_loss, train_accuracy."""
  hard = summarise_head(head)

  def summarise(sums):
    metrics = hard(sums)
    kd = sums["kd_loss"] / jnp.maximum(sums["kd_weight"], 1.0)
    metrics["hard_loss"] = metrics["loss"]
    metrics["kd_loss"] = kd
    metrics["loss"] = alpha * kd + (1.0 - alpha) * metrics["hard_loss"]
    return metrics
  return summarise


# --- general distillation: the teacher's masked-language-model distribution ----------------
#
# loss = alpha * T^2 * KL(softmax(teacher_mlm / T) || softmax(student_mlm / T))
#        + (1 - alpha) * the student's MLM cross-entropy on the true tokens,
# both over the masked positions (masked_weights), normalised by the global batch's masked
# weight, as pretraining's MLM term is. NSP is not distilled (DistilBERT drops it too).

def mlm_distill_sums(student, teacher, batch, temperature: float):
  """Sums of the KD term, the student's MLM loss and hits, the teacher's hits (how far the
  student is from it), and the masked weight: student and teacher are pretraining outputs."""
  w = batch["masked_weights"].astype(jnp.float32)
  kd = _kl(teacher["mlm_logits"], student["mlm_logits"], temperature)
  mlm_loss, mlm_hits = cross_entropy_sums(student["mlm_logits"], batch["masked_ids"], w)
  teacher_hits = jnp.sum(w * (jnp.argmax(teacher["mlm_logits"], -1) == batch["masked_ids"]))
  return {"kd_loss": jnp.sum(w * kd), "mlm_loss": mlm_loss, "mlm_hits": mlm_hits,
          "teacher_mlm_hits": teacher_hits, "mlm_weight": jnp.sum(w)}


def mlm_distill_totals(batch):
  return {"mlm": jnp.maximum(jnp.sum(batch["masked_weights"].astype(jnp.float32)), 1.0)}


def mlm_distill_loss(alpha: float):
  def loss(sums, totals):
    return (alpha * sums["kd_loss"] + (1.0 - alpha) * sums["mlm_loss"]) / totals["mlm"]
  return loss


def summarise_mlm_distill(alpha: float):
  """loss (the objective), kd_loss, mlm_loss, mlm_accuracy and teacher_mlm_accuracy."""

  def summarise(sums):
    w = jnp.maximum(sums["mlm_weight"], 1.0)
    kd, mlm = sums["kd_loss"] / w, sums["mlm_loss"] / w
    return {"loss": alpha * kd + (1.0 - alpha) * mlm, "kd_loss": kd, "mlm_loss": mlm,
            "mlm_accuracy": sums["mlm_hits"] / w,
            "teacher_mlm_accuracy": sums["teacher_mlm_hits"] / w}
  return summarise


# --- sequence to sequence --------------------------------------------------------------------

def token_weights(batch):
  weights = batch["target_mask"].astype(jnp.float32)
  if "example_weight" in batch:
    weights = weights * batch["example_weight"].astype(jnp.float32)[:, None]
  return weights


def seq2seq_sums(logits_BxTxV, batch, label_smoothing: float = 0.0):
  """Sums of the smoothed loss, the plain NLL, correct tokens and weight (all float32).

  Smoothing spreads `label_smoothing` of the target mass uniformly over the vocabulary:
  loss = (1 - e) * NLL + e * mean over v of -log p(v).
  """
  weights_BxT = token_weights(batch)
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  nll_BxT = -jnp.take_along_axis(logp_BxTxV, batch["target_ids"][..., None].astype(jnp.int32),
                                 axis=-1)[..., 0]
  loss_BxT = nll_BxT
  if label_smoothing > 0.0:
    loss_BxT = (1.0 - label_smoothing) * nll_BxT - label_smoothing * jnp.mean(logp_BxTxV,
                                                                              axis=-1)
  correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == batch["target_ids"]).astype(jnp.float32)
  return {"loss": jnp.sum(loss_BxT * weights_BxT), "nll": jnp.sum(nll_BxT * weights_BxT),
          "hits": jnp.sum(correct_BxT * weights_BxT), "weight": jnp.sum(weights_BxT)}


def summarise_seq2seq(sums):
  weight = jnp.maximum(sums["weight"], 1.0)
  return {"loss": sums["loss"] / weight, "nll": sums["nll"] / weight,
          "token_accuracy": sums["hits"] / weight}
