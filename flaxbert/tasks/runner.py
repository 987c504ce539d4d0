"""Running a fine-tuned encoder over prepared inputs: the model's deterministic outputs over
padded numpy arrays, in fixed-size batches (one compiled shape) sharded over the mesh's data
axes. Training-time dev scoring and `flaxbert predict` share it, so they agree exactly."""

from __future__ import annotations

import jax
import numpy as np

from flaxbert import sharding as mesh_lib
from flaxbert.progress import progress_bar
from flaxbert.training.step import make_predict_step

INPUT_KEYS = ("input_ids", "segment_ids", "input_mask")


class Runner:

  def __init__(self, model, mesh, batch_size: int = 64, show_progress: bool = False):
    dp = mesh_lib.data_parallel_size(mesh)
    self.batch_size = -(-batch_size // dp) * dp
    self.mesh = mesh
    self._step = jax.jit(make_predict_step(model))
    self.show_progress = show_progress

  def __call__(self, params, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(arrays["input_ids"])
    outputs: dict[str, list] = {}
    with jax.set_mesh(self.mesh), progress_bar(total=n, desc="predict", unit="row",
                                              disable=not self.show_progress) as bar:
      for start in range(0, n, self.batch_size):
        stop = min(start + self.batch_size, n)
        pad = self.batch_size - (stop - start)
        batch = {k: np.pad(arrays[k][start:stop], ((0, pad), (0, 0))) for k in INPUT_KEYS}
        out = jax.device_get(self._step(params, mesh_lib.global_batch(batch, self.mesh)))
        for k, v in out.items():
          outputs.setdefault(k, []).append(np.asarray(v)[:stop - start])
        bar.update(stop - start)
    return {k: np.concatenate(v) for k, v in outputs.items()}
