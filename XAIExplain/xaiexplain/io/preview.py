"""PNG previews: axial, coronal and sagittal slices through the map's peak, the map over the image."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import SimpleITK as sitk
import numpy as np

from ..core.volume import Volume


def _ras_array(volume: Volume, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The channel reoriented (axis flips/permutations only, no resampling) so i->R, j->A, k->S."""
    image = sitk.DICOMOrient(volume.to_sitk(channel), "LPS")  # ITK's code names where axes come FROM
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)[::-1, ::-1, :]
    return np.ascontiguousarray(array), np.array(image.GetSpacing())


def _warning_lines(attribution, width: int = 135) -> list[str]:
    """The attribution's warnings as 'WARNING: ...' lines, wrapped to the picture's width."""
    from ..core.result import warning_text

    lines = []
    for warning in getattr(attribution, "warnings", []):
        lines += textwrap.wrap("WARNING: " + warning_text(warning), width, subsequent_indent="    ",
                               break_on_hyphens=False)
    return lines


def _robust_limit(strength: np.ndarray) -> float:
    nonzero = strength[strength > 0]
    return float(np.percentile(nonzero, 99.5)) if nonzero.size else 1.0


def _densest(strength: np.ndarray) -> tuple:
    """Where the evidence is densest (the maximum of the map averaged over 5^3 voxels): the slices shown."""
    from scipy import ndimage
    return np.unravel_index(int(np.argmax(ndimage.uniform_filter(strength.astype(np.float32), 5))), strength.shape)


def render_preview(image: Volume, attribution, path: str | os.PathLike, title: str = "") -> Path:
    """Write a 3-panel PNG of ``attribution`` (an :class:`Attribution`) over channel 0 of ``image``; its
    warnings, if any, in a red box under the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, spacing = _ras_array(image)
    heat, _ = _ras_array(attribution.map)
    strength = np.abs(heat) if attribution.signed else heat - float(heat.min())
    peak = _densest(strength)
    # the colours span the 99.5th percentile of the map, not its maximum: on real networks a few
    # voxels (a patch edge, a decision boundary) can be orders of magnitude above the rest
    limit = _robust_limit(strength)
    if attribution.signed:
        cmap, vmin, vmax = "RdBu_r", -limit, limit
        shown = np.abs(heat) >= 0.2 * limit
    else:
        vmin = float(heat.min())
        vmax = vmin + limit
        cmap = "inferno"
        shown = heat >= vmin + 0.2 * limit
    lo, hi = np.percentile(base, [1, 99.5])
    views = [("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2))]
    lines = _warning_lines(attribution)
    band = 0.2 * len(lines)  # inches under the panels for the warnings
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4 + band), dpi=100)
    if lines:
        fig.subplots_adjust(bottom=(band + 0.15) / (4.4 + band))
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
    if lines:  # a map that should not be trusted says so on the picture itself
        fig.text(0.01, 0.01, "\n".join(lines), color="#b00000", fontsize=9, fontweight="bold", va="bottom",
                 bbox={"facecolor": "#fff3cd", "edgecolor": "#b00000", "boxstyle": "round,pad=0.3"})
    path = Path(path)
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
