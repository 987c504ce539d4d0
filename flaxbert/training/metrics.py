"""What a run writes about itself: metrics.jsonl, TensorBoard events, throughput and MFU.

Only process 0 writes. On resume from step s, lines for steps after s (written before the
kill, after the last checkpoint) are dropped, so the file never repeats or skips a step.
"""

from __future__ import annotations

import json
import math
import os

import jax

from flaxbert.models.config import BertConfig

# Dense bf16 peak FLOP/s per device, for the MFU estimate (None: unknown, MFU not reported).
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
    "A100": 312e12, "A800": 312e12, "L4": 121e12, "A10": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def device_peak_flops(device=None) -> float | None:
  kind = (device or jax.devices()[0]).device_kind
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if name.lower() in kind.lower():
      return PEAK_FLOPS[name]
  return None


def matmul_params(config: BertConfig) -> int:
  """Encoder matmul parameters N: per layer QKV + output projection + the two FFN matrices."""
  h, f = config.hidden_size, config.intermediate_size
  return config.num_layers * (4 * h * h + 2 * h * f)


def flops_per_token(config: BertConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6N for the matmuls plus 12*L*H*S for attention scores."""
  return 6 * matmul_params(config) + 12 * config.num_layers * config.hidden_size * seq_len


class MetricsWriter:
  def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    _drop_lines_after(self.path, resume_step)
    from tensorboardX import SummaryWriter
    # purge_step makes TensorBoard forget events after the checkpoint we resumed from.
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _plain(value):
  if hasattr(value, "item"):
    value = value.item()
  return value


def _drop_lines_after(path: str, step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (json.JSONDecodeError, KeyError, TypeError):
      pass  # a line cut short by the kill
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)
