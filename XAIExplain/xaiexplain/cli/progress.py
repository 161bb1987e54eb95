"""How the command reports progress: a tqdm bar for people, JSON lines for a parent process."""
from __future__ import annotations

import sys

from ..protocol import progress_line


class ProgressBar:
    """A tqdm bar fed by the engine's (fraction, message) callback; messages also go to stderr lines."""

    def __init__(self, enabled: bool = True):
        self.bar = None
        self.enabled = enabled

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=1000, unit="‰", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
        self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        self.bar.set_description_str(message[:60])
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


class ProgressLines:
    """Machine-readable progress for a parent process: one JSON object per line on stdout, flushed."""

    def __call__(self, fraction: float, message: str) -> None:
        print(progress_line(fraction, message), flush=True)

    def close(self):
        pass
