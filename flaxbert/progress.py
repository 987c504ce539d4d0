"""The progress bar every long job shows: tqdm with throughput and ETA, on stderr."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", disable: bool = False,
                 initial: int = 0):
  return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable,
              dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
