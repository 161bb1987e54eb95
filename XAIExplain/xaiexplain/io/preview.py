"""PNG previews: axial, coronal and sagittal slices through the map's peak, the map over the image."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.volume import Volume


def _ras_array(volume: Volume, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The channel reoriented (axis flips/permutations only, no resampling) so i->R, j->A, k->S."""
    image = sitk.DICOMOrient(volume.to_sitk(channel), "LPS")  # ITK's code names where axes come FROM
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)[::-1, ::-1, :]
    return np.ascontiguousarray(array), np.array(image.GetSpacing())


def render_preview(image: Volume, attribution, path: str | os.PathLike, title: str = "") -> Path:
    """Write a 3-panel PNG of ``attribution`` (an :class:`Attribution`) over channel 0 of ``image``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, spacing = _ras_array(image)
    heat, _ = _ras_array(attribution.map)
    peak = np.unravel_index(int(np.argmax(np.abs(heat) if attribution.signed else heat)), heat.shape)
    if attribution.signed:
        limit = float(np.abs(heat).max()) or 1.0
        cmap, vmin, vmax = "RdBu_r", -limit, limit
        shown = np.abs(heat) >= 0.2 * limit
    else:
        vmin, vmax = float(heat.min()), float(heat.max()) or 1.0
        cmap = "inferno"
        shown = heat >= vmin + 0.2 * (vmax - vmin)
    lo, hi = np.percentile(base, [1, 99.5])
    views = [("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2))]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=100)
    for ax, (name, axis, (a, b)) in zip(axes, views):
        index = [slice(None)] * 3
        index[axis] = peak[axis]
        sl = tuple(index)
        extent = (0, base.shape[a] * spacing[a], 0, base.shape[b] * spacing[b])
        ax.imshow(base[sl].T, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent)
        overlay = np.ma.masked_where(~shown[sl], heat[sl])
        im = ax.imshow(overlay.T, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.6, origin="lower", extent=extent)
        if name != "sagittal":  # radiological display: patient's right on the screen's left
            ax.invert_xaxis()
        ax.set_title(f"{name} (slice {peak[axis]})", fontsize=10)
        ax.axis("off")
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01)
    fig.suptitle(title or attribution.method, fontsize=11)
    path = Path(path)
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
