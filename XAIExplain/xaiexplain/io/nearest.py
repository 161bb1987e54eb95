"""A prototype network's explanation as a picture: for each of its top prototypes, the training patches it was
pushed onto ("this region looks like these"), with the prototype's class, weight for the target and similarity.
The patches come with the map (``methods.prototypes``): the middle slice of each along the model space's third
axis, in model space. Where that space is RAS (``info["model_orientation"]``) the slices are axial and drawn
as the previews draw them (radiological: the patient's right on the left, letters on the sides)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .preview import save_png


def has_nearest_patches(attribution) -> bool:
    return any(entry.get("nearest_slices") for entry in attribution.info.get("prototypes", []) or [])


def render_nearest_patches(attribution, path: str | os.PathLike) -> Path:
    """One row per prototype that carries its nearest patches, one panel per patch (shared grey scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [entry for entry in attribution.info["prototypes"] if entry.get("nearest_slices")]
    columns = max(len(entry["nearest_slices"]) for entry in rows)
    values = np.concatenate([np.asarray(entry["nearest_slices"], np.float32).ravel() for entry in rows])
    lo, hi = np.percentile(values, [1, 99.5])
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns + 3.2, 2.3 * len(rows)), dpi=100,
                             squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.6, top=0.88, bottom=0.04, wspace=0.05, hspace=0.25)
    target = attribution.target.get("name")
    ras = str(attribution.info.get("model_orientation") or "").upper() == "RAS"
    for row, entry in zip(axes, rows):
        for column, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if column < len(entry["nearest_slices"]):
                ax.imshow(np.asarray(entry["nearest_slices"][column]).T, cmap="gray", vmin=lo, vmax=hi,
                          origin="lower")
                if ras:  # as the previews: radiological, the patient's right on the screen's left
                    ax.invert_xaxis()
                    for text, x, y in (("R", 0.03, 0.5), ("L", 0.97, 0.5), ("P", 0.5, 0.03), ("A", 0.5, 0.97)):
                        ax.text(x, y, text, transform=ax.transAxes, color="#ffd21f", fontsize=8, ha="center",
                                va="center", fontweight="bold")
                source = entry["nearest"][column]
                ax.set_title(f"training case {source['case']}", fontsize=8)
            else:
                ax.axis("off")
        state = "" if entry["enabled"] else " (disabled)"
        caption = (f"prototype {entry['prototype']}{state}\nclass {entry['class']}\n"
                   f"weight for {target}: {entry['weight']:+.3f}\nsimilarity here: {entry['similarity']:.3f}\n"
                   f"adds {entry['adds']:+.3f}")
        row[-1].text(1.08, 0.5, caption, transform=row[-1].transAxes, fontsize=9, va="center")
    plane = "axial slices" if ras else "slices along the model space's third axis"
    fig.suptitle(f"{attribution.method}: what the top prototypes look like (their nearest training patches, "
                 f"{plane})", fontsize=10)
    return save_png(fig, path)
