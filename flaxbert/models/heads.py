"""Task heads on the BERT encoder, and the models that pair them with it.

Every model takes (input_ids, segment_ids, input_mask, deterministic) — pretraining also the
masked positions — and returns a dict of float32 outputs. The encoder's parameters always sit
under "bert" so any head's model can load any other's encoder weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from flaxbert.models.bert import BertModel, activation, dense, layer_norm, logical
from flaxbert.models.config import BertConfig


def gather_positions(x_BxLxD, positions_BxP):
  """Hidden states at the given positions: B x P x D (BERT's gather_indexes)."""
  return jnp.take_along_axis(x_BxLxD, positions_BxP[..., None].astype(jnp.int32), axis=1)


class MLMHead(nn.Module):
  """Dense + GELU + LayerNorm, then a decoder tied to the token embedding, plus a bias."""

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxPxD, word_table_VxD):
    cfg = self.config
    h_BxPxD = dense(cfg, cfg.hidden_size, ("embed", "mlp"), "transform")(x_BxPxD)
    h_BxPxD = layer_norm(cfg, "transform_norm")(activation(cfg.hidden_act)(h_BxPxD))
    # Pin the head's hidden states like every block boundary (embed unsharded for activations).
    # Without it XLA propagated `tensor` onto their embed dim (from the transform's "mlp"
    # output), and the decoder's backward dot d(h) = d(logits) @ table -- lhs batch over
    # (data, fsdp) and vocab over tensor, table's embed dim over fsdp, result embed over tensor --
    # is miscompiled by XLA's SPMD partitioner on a data x fsdp x tensor mesh (batch shards
    # permuted and never permuted back: wrong gradients). See bench/xla_sharding_bug_repro.py.
    h_BxPxD = nn.with_logical_constraint(h_BxPxD, ("batch", None, "embed"))
    logits_BxPxV = jnp.einsum("bpd,vd->bpv", h_BxPxD.astype(cfg.dtype),
                              word_table_VxD.astype(cfg.dtype),
                              preferred_element_type=jnp.float32)
    bias_V = self.param("output_bias", logical(nn.initializers.zeros, ("vocab",)),
                        (cfg.vocab_size,), jnp.float32)
    return logits_BxPxV + bias_V


class Classifier(nn.Module):
  """Dropout then a linear layer to `num_labels` outputs (BERT's classification layer)."""

  config: BertConfig
  num_labels: int
  dropout: bool = True

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if self.dropout:
      x = nn.Dropout(self.config.hidden_dropout)(x, deterministic=deterministic)
    return dense(self.config, self.num_labels, ("embed", None), "dense")(x).astype(jnp.float32)


class BertEncoder(nn.Module):
  """The bare encoder: per-token hidden states and the pooled [CLS] vector; with
  `all_layers` also "all_hidden", every hidden state ((num_layers + 1) x B x L x D: the
  embeddings' output, then each layer's, as transformers' `hidden_states`)."""

  config: BertConfig
  all_layers: bool = False

  @nn.compact
  def __call__(self, input_ids, segment_ids=None, input_mask=None, deterministic=True):
    out = BertModel(self.config, name="bert")(input_ids, segment_ids, input_mask,
                                              deterministic=deterministic,
                                              all_layers=self.all_layers)
    result = {"hidden": out[0].astype(jnp.float32), "pooled": out[1].astype(jnp.float32)}
    if self.all_layers:
      result["all_hidden"] = out[2].astype(jnp.float32)
    return result


class BertForPreTraining(nn.Module):
  """MLM + NSP. MLM logits only at `masked_positions` (B x P) when given, else everywhere."""

  config: BertConfig

  def setup(self):
    self.bert = BertModel(self.config)
    self.mlm = MLMHead(self.config)
    self.nsp = Classifier(self.config, 2, dropout=False)

  def __call__(self, input_ids, segment_ids=None, input_mask=None, masked_positions=None,
               deterministic=True, position_ids=None, nsp_positions=None):
    # Packed rows (data/packing.py) come with each example's [CLS] position: NSP logits are
    # then B x E x 2, one per example.
    seq_BxLxD, pooled_BxD = self.bert(input_ids, segment_ids, input_mask, position_ids,
                                      deterministic=deterministic,
                                      packed=nsp_positions is not None,
                                      cls_positions_BxE=nsp_positions)
    if masked_positions is not None:
      seq_BxLxD = nn.with_logical_constraint(gather_positions(seq_BxLxD, masked_positions),
                                             ("batch", None, "embed"))
    return {"mlm_logits": self.mlm(seq_BxLxD, self.bert.word_table()),
            "nsp_logits": self.nsp(pooled_BxD, deterministic)}


class BertForSequenceClassification(nn.Module):
  """Classification (num_labels classes) or regression (num_labels == 1) on the pooled vector."""

  config: BertConfig
  num_labels: int

  @nn.compact
  def __call__(self, input_ids, segment_ids=None, input_mask=None, deterministic=True):
    _, pooled_BxD = BertModel(self.config, name="bert")(
        input_ids, segment_ids, input_mask, deterministic=deterministic)
    return {"logits": Classifier(self.config, self.num_labels, name="classifier")(
        pooled_BxD, deterministic)}


class BertForTokenClassification(nn.Module):
  """A label per token (NER tagging): B x L x num_labels."""

  config: BertConfig
  num_labels: int

  @nn.compact
  def __call__(self, input_ids, segment_ids=None, input_mask=None, deterministic=True):
    seq_BxLxD, _ = BertModel(self.config, name="bert")(
        input_ids, segment_ids, input_mask, deterministic=deterministic)
    return {"logits": Classifier(self.config, self.num_labels, name="classifier")(
        seq_BxLxD, deterministic)}


class BertForQuestionAnswering(nn.Module):
  """Span QA: start and end logits per token (B x L each)."""

  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, segment_ids=None, input_mask=None, deterministic=True):
    seq_BxLxD, _ = BertModel(self.config, name="bert")(
        input_ids, segment_ids, input_mask, deterministic=deterministic)
    logits_BxLx2 = Classifier(self.config, 2, dropout=False, name="qa_outputs")(
        seq_BxLxD, deterministic)
    return {"start_logits": logits_BxLx2[..., 0], "end_logits": logits_BxLx2[..., 1]}
