"""PNG previews: axial, coronal and sagittal slices of the map over the image, in radiological display.

Each panel names its plane, its position in mm (RAS) and the patient directions at its edges; the colour bar
says what the values are and which are hidden. A run's previews share their slices (:func:`preview_point`) so
the methods can be compared; an ROI or mask is drawn as an outline, and the shortcut check's offending region
as a dashed one. Signed maps use colours that start saturated above the display threshold (no white or grey
centre that could pass for bright anatomy).
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import SimpleITK as sitk
import numpy as np

from ..core.volume import Volume

THRESHOLD_FRACTION = 0.2  # of the colour range: weaker values are not drawn (as in Slicer's default display)
# (plane, the RAS axis it cuts, the array axes shown as (x, y), the letters at left/right/bottom/top)
VIEWS = [("axial", 2, (0, 1), "RLPA"), ("coronal", 1, (0, 2), "RLIS"), ("sagittal", 0, (1, 2), "PAIS")]
RAS = "RAS"


def _oriented(volume: Volume, channel: int = 0) -> sitk.Image:
    return sitk.DICOMOrient(volume.to_sitk(channel), "LPS")  # ITK's code names where axes come FROM


def _ras_array(volume: Volume, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The channel reoriented (axis flips/permutations only, no resampling) so i->R, j->A, k->S."""
    image = _oriented(volume, channel)
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)[::-1, ::-1, :]
    return np.ascontiguousarray(array), np.array(image.GetSpacing())


def _to_ras_index(volume: Volume, index) -> tuple[np.ndarray, np.ndarray]:
    """A voxel index (i, j, k) of ``volume`` as an index of its RAS array, and its RAS position in mm."""
    image = volume.to_sitk(0)
    point = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])  # LPS
    oriented = _oriented(volume)
    lps = np.array(oriented.TransformPhysicalPointToIndex(point))
    size = np.array(oriented.GetSize())
    ras_index = np.array([size[0] - 1 - lps[0], size[1] - 1 - lps[1], lps[2]])
    return np.clip(ras_index, 0, size - 1), np.array([-point[0], -point[1], point[2]])


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
    """Where the evidence is densest (the maximum of the map averaged over 5^3 voxels)."""
    from scipy import ndimage
    return np.unravel_index(int(np.argmax(ndimage.uniform_filter(strength.astype(np.float32), 5))), strength.shape)


def _strength(attribution) -> np.ndarray:
    a = np.asarray(attribution.array, np.float64)
    return np.abs(a) if attribution.signed else a - float(a.min())


def preview_point(attributions) -> tuple[int, int, int]:
    """The voxel (on the input grid) every preview of a run cuts through: where the maps' evidence is densest
    together (each map scaled to its own robust maximum). Not the ROI's centre: a map that looks elsewhere
    (at a marker in a corner) must be seen doing so."""
    total = sum(_strength(a) / max(_robust_limit(_strength(a)), 1e-30) for a in attributions)
    return tuple(int(v) for v in _densest(np.asarray(total)))


def signed_colormap(threshold: float = THRESHOLD_FRACTION):
    """Blue (against) to red (for) over [-1, 1], saturated from the threshold on; the hidden centre grey."""
    from matplotlib.colors import ListedColormap

    t = np.linspace(-1, 1, 512)
    colours = np.empty((t.size, 4))
    weak, strong = np.array([0.15, 0.6, 1.0]), np.array([0.0, 0.08, 0.55])
    warm, hot = np.array([1.0, 0.6, 0.0]), np.array([0.6, 0.0, 0.0])
    for n, v in enumerate(t):
        s = np.clip((abs(v) - threshold) / (1 - threshold), 0, 1)
        colours[n, :3] = (weak + s * (strong - weak)) if v < 0 else (warm + s * (hot - warm))
        if abs(v) < threshold:
            colours[n, :3] = 0.5
        colours[n, 3] = 1.0
    return ListedColormap(colours, name="xaiexplain-signed")


def _outline(ax, mask2d: np.ndarray, extent, colour: str, style: str) -> None:
    if mask2d.any() and not mask2d.all():
        ax.contour(mask2d.T.astype(float), levels=[0.5], colors=colour, linewidths=1.2, linestyles=style,
                   origin="lower", extent=extent)


def render_preview(image: Volume, attribution, path: str | os.PathLike, title: str = "", point=None,
                   outline: Volume | None = None, outline_name: str = "ROI") -> Path:
    """Write a 3-panel PNG of ``attribution`` (an :class:`Attribution`) over channel 0 of ``image``.

    ``point``: the voxel (i, j, k) of the input grid the planes cut through (default: where this map's
    evidence is densest); ``outline``: a mask on the input grid drawn as a contour (``outline_name`` in the
    legend). The shortcut check's region, if the map has one, is drawn dashed; warnings go in a red box."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    base, spacing = _ras_array(image)
    heat, _ = _ras_array(attribution.map)
    strength = np.abs(heat) if attribution.signed else heat - float(heat.min())
    if point is None:
        point = preview_point([attribution])
    where, ras = _to_ras_index(image, point)
    # the colours span the 99.5th percentile of the map, not its maximum: on real networks a few
    # voxels (a patch edge, a decision boundary) can be orders of magnitude above the rest
    limit = _robust_limit(strength)
    if attribution.signed:
        cmap, vmin, vmax = signed_colormap(), -limit, limit
        shown = np.abs(heat) >= THRESHOLD_FRACTION * limit
        label = (f"colours: {attribution.method} value, red for and blue against the target; |value| < "
                 f"{THRESHOLD_FRACTION * limit:.3g} not drawn (grey on the bar)")
    else:
        vmin = float(heat.min())
        vmax = vmin + limit
        cmap = "inferno"
        shown = heat >= vmin + THRESHOLD_FRACTION * limit
        label = (f"colours: {attribution.method} value (evidence for the target); below "
                 f"{vmin + THRESHOLD_FRACTION * limit:.3g} not drawn")
    masks = []
    if outline is not None:
        masks.append((_ras_array(outline)[0] > 0, "#00e5ff", "solid", outline_name))
    region = getattr(attribution, "shortcut_region", None)
    if region is not None:
        masks.append((_ras_array(region)[0] > 0, "#39ff14", "dashed", "shortcut check: suspect evidence"))
    lo, hi = np.percentile(base, [1, 99.5])
    lines = _warning_lines(attribution)
    band = 0.2 * len(lines)  # inches under the panels for the warnings
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6 + band), dpi=100)
    fig.subplots_adjust(left=0.02, right=0.9, top=0.84, bottom=(band + 0.25) / (4.6 + band))
    for ax, (name, axis, (a, b), letters) in zip(axes, VIEWS):
        index = [slice(None)] * 3
        index[axis] = int(where[axis])
        sl = tuple(index)
        extent = (0, base.shape[a] * spacing[a], 0, base.shape[b] * spacing[b])
        ax.imshow(base[sl].T, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent)
        overlay = np.ma.masked_where(~shown[sl], heat[sl])
        im = ax.imshow(overlay.T, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.7, origin="lower", extent=extent)
        for mask, colour, style, _ in masks:
            _outline(ax, mask[sl], extent, colour, style)
        if name != "sagittal":  # radiological display: patient's right on the screen's left
            ax.invert_xaxis()
        ax.set_title(f"{name}, {RAS[axis]} {ras[axis]:+.1f} mm", fontsize=10)
        for text, (x, y, ha, va) in zip(letters, [(0.02, 0.5, "left", "center"), (0.98, 0.5, "right", "center"),
                                                  (0.5, 0.02, "center", "bottom"), (0.5, 0.98, "center", "top")]):
            ax.text(x, y, text, transform=ax.transAxes, color="#ffd21f", fontsize=11, fontweight="bold", ha=ha,
                    va=va)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, cax=fig.add_axes([0.915, 0.3, 0.012, 0.5]))
    fig.text(0.02, (band + 0.08) / (4.6 + band), label, fontsize=8)
    if masks:
        fig.legend(handles=[Line2D([], [], color=c, linestyle=s, label=n) for _, c, s, n in masks],
                   loc="lower right", fontsize=8, frameon=False)
    fig.suptitle(title or attribution.method, fontsize=11)
    if lines:  # a map that should not be trusted says so on the picture itself
        fig.text(0.01, 0.01, "\n".join(lines), color="#b00000", fontsize=9, fontweight="bold", va="bottom",
                 bbox={"facecolor": "#fff3cd", "edgecolor": "#b00000", "boxstyle": "round,pad=0.3"})
    return save_png(fig, path)


def save_png(fig, path: str | os.PathLike) -> Path:
    """``fig`` written to ``path`` whole or not at all (a temporary file beside it, then moved), and closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
