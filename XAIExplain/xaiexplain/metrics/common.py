"""What every metric shares: a batched, pass-counting scorer, voxel maps, substrates and map similarity.

Metrics work in model space: ``x`` is the (1, C, X, Y, Z) model input and a
map is a voxel map (X, Y, Z) (channel maps are summed, as ``explain()`` does;
a perturbation replaces all channels of a voxel together).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage, stats

from ..errors import XAIError
from ..core.models import evaluation_mode
from ..methods.base import batched
from ..core.models import LoadedModel, load_model, model_output, probabilities
from ..core.targets import ClassTarget


def loaded(model) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, device=None)


def voxel_map(attribution) -> np.ndarray:
    """A float64 copy (X, Y, Z) of a map given as (X, Y, Z), (C, X, Y, Z) or (1, C, X, Y, Z)."""
    if torch.is_tensor(attribution):
        a = attribution.detach().cpu().double().numpy()
    else:
        a = np.array(attribution, np.float64)
    if a.ndim == 5:
        a = a[0]
    if a.ndim == 4:
        a = a.sum(0)
    if a.ndim != 3:
        raise XAIError(f"a map must be 3D (X, Y, Z), possibly with channel axes; got shape {a.shape}",
                       "give the map in model space, e.g. from xaiexplain.attribute")
    return a


class Scorer:
    """The target score of batches of model-space inputs, on the model's device; counts forward passes.

    ``output``: 'logit' (the target's score as the methods explain it) or 'probability'
    (softmax over the class axis first, sigmoid for a single-logit output, as in the RISE
    deletion/insertion games).
    """

    def __init__(self, model, x: torch.Tensor, target=None, output: str = "logit", batch_size: int = 8):
        if output not in ("logit", "probability"):
            raise XAIError(f"unknown score output '{output}'", "use logit or probability")
        self.model = loaded(model)
        self.x = x.detach().to(self.model.device)
        self.output, self.batch_size, self.passes = output, batch_size, 0
        with torch.inference_mode(), evaluation_mode(self.model):
            self.reference = model_output(self.model.network(self.x)).float().clone()
        target = target if hasattr(target, "score") else ClassTarget(target)
        self.target = target.resolve(self.reference, self.model.class_names)
        self.base = float(self(self.x)[0])
        self.passes = 0  # the scorer's own reference passes are not charged to a metric

    def __call__(self, inputs: torch.Tensor) -> np.ndarray:
        out = []
        for part in batched(inputs.shape[0], self.batch_size):
            chunk = inputs[part].to(self.model.device)
            with torch.inference_mode(), evaluation_mode(self.model):
                logits = model_output(self.model.network(chunk)).float()
            if self.output == "probability":
                logits = probabilities(logits)
            ref = self.reference.expand((chunk.shape[0],) + tuple(self.reference.shape[1:]))
            out.append(self.target.score(logits, ref).double().cpu())
            self.passes += int(chunk.shape[0])
        return torch.cat(out).numpy()


def descending_order(a: np.ndarray) -> np.ndarray:
    """Flat voxel indices from the highest value down; ties keep index order (deterministic)."""
    return np.argsort(-a.ravel(), kind="stable")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def ssim(a: np.ndarray, b: np.ndarray, win_size: int = 7, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004) of two volumes: uniform window, sample covariance,
    borders of half a window left out (the conventions of scikit-image's ``structural_similarity``)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = win_size ** a.ndim
    cov_norm = n / (n - 1)
    mean = lambda v: ndimage.uniform_filter(v, size=win_size)
    ua, ub = mean(a), mean(b)
    vaa = cov_norm * (mean(a * a) - ua * ua)
    vbb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua ** 2 + ub ** 2 + c1) * (vaa + vbb + c2))
    pad = (win_size - 1) // 2
    return float(s[tuple(slice(pad, -pad) for _ in range(a.ndim))].mean())


def magnitude(a: np.ndarray) -> np.ndarray:
    """|a| scaled to a maximum of 1 (all zeros stay zeros): how the sanity checks compare maps."""
    m = np.abs(a)
    top = m.max()
    return m / top if top > 0 else m


def map_similarity(a: np.ndarray, b: np.ndarray) -> dict:
    """Spearman rank correlation of |maps| and SSIM of |maps| scaled to [0, 1]."""
    ma, mb = magnitude(a), magnitude(b)
    return {"spearman_abs": spearman(ma, mb), "ssim_abs": ssim(ma, mb)}


def fraction_count(value, n: int) -> int:
    """A count given as an int, or as a fraction (float < 1) of ``n``."""
    count = int(round(value * n)) if isinstance(value, float) and value < 1 else int(value)
    if not 1 <= count <= n:
        raise XAIError(f"{value} selects {count} of {n} voxels", "choose a fraction in (0, 1) or a count in range")
    return count
