"""Relevance bookkeeping shared by LRP's rules: the stabiliser, and the ledger of what each kind of step keeps."""
from __future__ import annotations

import torch


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), with sign(0) = 1."""
    return torch.where(z >= 0, z + eps, z - eps)


class Ledger:
    """The relevance each kind of step keeps back, per sample: biases and stabilisers (epsilon), constants
    in sums, a norm's shift. What the input lacks of the score must all be booked here: anything else is
    relevance lost or made by a step that has no rule (``conservation_error``)."""

    def __init__(self, samples: int):
        self.samples = samples
        self.kept: dict[str, torch.Tensor] = {}

    def book(self, kind: str, relevance: torch.Tensor, *returned) -> None:
        n = self.samples
        kept = _per_sample(relevance, n)
        for r in returned:
            if r is not None:
                kept = kept - _per_sample(r, n)
        self.kept[kind] = self.kept.get(kind, 0) + kept

    def shares(self, scores: torch.Tensor) -> dict[str, list[float]]:
        return {kind: [float(v) for v in kept.cpu() / scores] for kind, kept in sorted(self.kept.items())}

    def total(self, n: int) -> torch.Tensor:
        return sum((kept.cpu() for kept in self.kept.values()), torch.zeros(n, dtype=torch.float64))


def _per_sample(t: torch.Tensor, n: int) -> torch.Tensor:
    """Each of the ``n`` samples' relevance, summed on its device (a host copy per layer stalls a GPU). A batch of
    windows (shifted-window attention: the windows of each sample in turn) is summed per sample; broadcasts
    are split evenly."""
    t = t.detach().double()
    if t.ndim > 1 and t.shape[0] % n == 0:
        return t.reshape(n, -1).sum(1)
    return t.sum().expand(n) / n
