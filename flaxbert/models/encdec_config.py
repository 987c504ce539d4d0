"""EncDecConfig: the hyperparameters of the encoder-decoder Transformer, and its presets."""

from __future__ import annotations

import dataclasses

from flaxbert.errors import FlaxbertError


@dataclasses.dataclass(frozen=True)
class EncDecConfig:
  vocab_size: int = 8064
  hidden_size: int = 512
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  num_heads: int = 8
  intermediate_size: int = 2048
  hidden_act: str = "relu"            # the paper's FFN
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.0
  layer_norm_eps: float = 1e-6
  # Std of dense kernels. None: Glorot/Xavier per kernel, sqrt(2 / (fan_in + fan_out)), as
  # torch's nn.Transformer and the flax WMT example initialise them (it follows hidden_size
  # and intermediate_size when --set changes them). A number: that std for every kernel
  # (BERT's 0.02 leaves attention nearly uniform at small widths and training stalls).
  # Embeddings always use hidden_size ** -0.5.
  initializer_range: float | None = None
  pre_ln: bool = False                # False: post-LN as in the paper
  share_embeddings: bool = True       # one table for source and target tokens
  tie_output: bool = True             # output projection = target embedding table, transposed
  pad_token_id: int = 0
  decoder_start_id: int = 2           # [CLS] of flaxbert tokenizers, as BOS
  eos_token_id: int = 3               # [SEP], the pipeline's EOS
  dtype: str = "float32"
  attention_impl: str = "auto"

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise FlaxbertError(f"hidden_size {self.hidden_size} does not divide by num_heads "
                          f"{self.num_heads}")
    if self.hidden_size % 2:
      raise FlaxbertError("sinusoidal positions need an even hidden_size")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def replace(self, **kw) -> "EncDecConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "EncDecConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise FlaxbertError(f"unknown encoder-decoder config fields: {', '.join(unknown)}")
    return cls(**d)


PRESETS = {
    # Tests and laptop demos: seconds per hundred steps on a CPU.
    "tiny": EncDecConfig(hidden_size=64, num_encoder_layers=2, num_decoder_layers=2,
                         num_heads=4, intermediate_size=256),
    # `finetune seq2seq`'s default: what 2 CPU cores train in half an hour (1.1M weights
    # besides the embeddings). On the English-German dictionary phrases it beat the
    # 256-wide 3+3 model at equal wall time (chrF 11.6 after 1,000 steps against 10.9, at
    # twice the steps per second); pre-LN takes the 3e-3 peak learning rate without warmup
    # trouble.
    "small": EncDecConfig(hidden_size=128, num_encoder_layers=3, num_decoder_layers=3,
                          num_heads=4, intermediate_size=512, pre_ln=True),
    # "Attention is all you need", base model.
    "transformer_base": EncDecConfig(),
}


def get_config(name: str, **overrides) -> EncDecConfig:
  if name not in PRESETS:
    raise FlaxbertError(f"unknown encoder-decoder preset {name!r} (known: "
                        f"{', '.join(PRESETS)})")
  try:
    return PRESETS[name].replace(**overrides)
  except TypeError as e:
    raise FlaxbertError(f"bad encoder-decoder config override: {e}") from None
