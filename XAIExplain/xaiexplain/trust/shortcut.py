"""The shortcut check without ground truth: how much of a map's top evidence lies where anatomy is not.

A model that is right for the right reasons looks at the body. Evidence outside it (air, the table),
on the image's borders and corners (padding, cropping and reconstruction edges), or on small objects far
brighter than any tissue (skin markers, burnt-in text, rulers, clips) is the signature of a shortcut. The
check needs only the image and the map, both on the input grid: it costs no model pass.

- body: the largest connected component above an Otsu threshold, closed and with its holes filled;
- borders: the outer ``BORDER_SHARE`` of the extent along each axis (at least ``BORDER_MIN_VOXELS``);
- bright objects: small connected components (under ``BRIGHT_MAX_SHARE`` of the body) far brighter than the
  body's tissue: above its median plus ``BRIGHT_INSIDE`` times its median-to-99.5th-percentile spread anywhere,
  or ``BRIGHT_OUTSIDE`` times it for those mostly outside the body (skin markers, text); a bright lesion
  inside the body is anatomy, not a marker.

The measure is the shortcut test's (``metrics.top_mass_share``): of the highest voxels holding a fraction
of the positive mass, the share inside the suspect areas; the larger of two fractions (``TOP_FRACTIONS``: the
peak evidence, and the broader top evidence), so that a smooth map (Grad-CAM) whose peak sits on a marker is
caught as well as a sharp one.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..core.volume import Volume
from ..errors import XAIError
from ..metrics.coherence import top_mass_share
from ..protocol import SHORTCUT_LABELS

TOP_FRACTIONS = (0.01, 0.1)
BORDER_SHARE = 0.03
BORDER_MIN_VOXELS = 2
BRIGHT_INSIDE = 4.0
BRIGHT_OUTSIDE = 2.0
BRIGHT_MAX_SHARE = 0.02
# Verdicts on the share of top evidence in suspect areas: at most PASS_BELOW clears, at least FAIL_FROM flags.
PASS_BELOW = 0.2
FAIL_FROM = 0.5
LABELS = SHORTCUT_LABELS  # the offending region's labels (a label volume on the input grid; a segment each in Slicer)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best separates two intensity classes (Otsu 1979)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    total = weight[-1]
    mean = np.cumsum(counts * centres)
    between = (mean[-1] * weight / total - mean) ** 2 / np.maximum(weight * (total - weight), 1e-12) * total
    return float(centres[int(np.argmax(between[:-1]))])


def body_mask(image: np.ndarray) -> np.ndarray:
    """The body in an (I, J, K) image: the largest component above Otsu's threshold, closed, holes filled."""
    finite = image[np.isfinite(image)]
    if finite.size == 0 or finite.min() == finite.max():
        raise XAIError("the image is constant: there is no body to find", "check the input volume")
    foreground = ndimage.binary_opening(image > _otsu(finite))
    labels, count = ndimage.label(foreground)
    if count == 0:
        return np.zeros(image.shape, bool)
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    body = ndimage.binary_closing(labels == largest, iterations=2, border_value=0)
    return ndimage.binary_fill_holes(body)


def border_mask(shape: tuple) -> np.ndarray:
    """The outer band of the volume along each axis (its corners included)."""
    mask = np.zeros(shape, bool)
    for axis, n in enumerate(shape):
        width = min(max(BORDER_MIN_VOXELS, int(round(BORDER_SHARE * n))), max(n // 2, 1))
        index = [slice(None)] * 3
        index[axis] = np.r_[0:width, n - width:n]
        mask[tuple(index)] = True
    return mask


def bright_objects(image: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Small components far brighter than the body's tissue (markers, text, clips), grown by one voxel."""
    tissue = image[body] if body.any() else image.ravel()
    median, high = np.percentile(tissue, [50, 99.5])
    spread = max(high - median, 1e-12)
    labels, count = ndimage.label(image > median + BRIGHT_OUTSIDE * spread)
    if count == 0:
        return np.zeros(image.shape, bool)
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones(image.shape), labels, index)
    peaks = ndimage.maximum(image, labels, index)
    outside = ndimage.mean(~body, labels, index) >= 0.5
    keep = (sizes <= BRIGHT_MAX_SHARE * max(int(body.sum()), 1)) & (outside | (peaks > median + BRIGHT_INSIDE * spread))
    return ndimage.binary_dilation(np.isin(labels, index[keep]))


def suspect_areas(image: Volume) -> dict[str, np.ndarray]:
    """The areas where evidence is suspect, on the image's grid (channel 0): one boolean (I, J, K) each."""
    array = np.asarray(image.array[0], np.float64)
    body = body_mask(array)
    return {"outside_body": ~body, "border": border_mask(array.shape), "bright_objects": bright_objects(array, body)}


def _verdict(share: float) -> str:
    if share != share:
        return "inconclusive"
    return "pass" if share < PASS_BELOW else "fail" if share >= FAIL_FROM else "inconclusive"


def shortcut_check(image: Volume, attribution: np.ndarray, areas: dict | None = None) -> dict:
    """The check of one map (I, J, K) over ``image``: shares of top evidence per area and in any, the verdict
    and its words, and ``region``: the offending voxels as labels (``LABELS``; 0 elsewhere) on the input grid.

    ``areas``: :func:`suspect_areas` of the image, to reuse across the maps of one run."""
    a = np.asarray(attribution, np.float64)
    if a.shape != tuple(image.array.shape[1:]):
        raise XAIError(f"the map's shape {a.shape} is not the image's {tuple(image.array.shape[1:])}",
                       "give the map on the input grid")
    areas = areas if areas is not None else suspect_areas(image)
    anywhere = areas["outside_body"] | areas["border"] | areas["bright_objects"]
    shares = {name: _share(a, mask) for name, mask in areas.items()}
    share = _share(a, anywhere)
    verdict = _verdict(share)
    where = max(shares, key=lambda k: -1 if shares[k] != shares[k] else shares[k])
    words = {"pass": f"{share:.0%} of the top evidence lies outside the anatomy: no sign of a shortcut",
             "fail": f"{share:.0%} of the top evidence lies where anatomy is not (most on: {where.replace('_', ' ')})"
                     ": the model may use a shortcut",
             "inconclusive": f"{share:.0%} of the top evidence lies outside the anatomy: look at the highlighted "
                             "region before trusting the map" if share == share else
                             "the map has no positive evidence to locate"}[verdict]
    return {"check": "shortcut", "verdict": verdict, "text": words, "share": share, "shares": shares,
            "top_fractions": list(TOP_FRACTIONS), "passes": {"forward": 0, "backward": 0},
            "region": offending_region(a, areas) if verdict != "pass" else None}


def _share(a: np.ndarray, mask: np.ndarray) -> float:
    """The top evidence's share in ``mask``: the larger at the two fractions (none in an empty area)."""
    if not np.clip(a, 0, None).any():
        return math.nan
    return max(top_mass_share(a, mask, f) for f in TOP_FRACTIONS) if mask.any() else 0.0


def offending_region(attribution: np.ndarray, areas: dict) -> np.ndarray:
    """The suspect evidence as labels (``LABELS``): top-evidence voxels outside the body or on a border, grown
    by one voxel within those areas, and every bright object the top evidence touches, whole."""
    a = np.clip(attribution, 0, None)
    flat = np.sort(a.ravel())[::-1]
    cumulative = np.cumsum(flat)
    labels = np.zeros(a.shape, np.uint8)
    if cumulative[-1] <= 0:
        return labels
    cut = flat[int(np.searchsorted(cumulative, max(TOP_FRACTIONS) * cumulative[-1]))]
    top = a >= cut
    for label, name in ((1, "outside_body"), (2, "border")):
        area = areas[name]
        labels[ndimage.binary_dilation(top & area) & area] = label
    objects, _ = ndimage.label(areas["bright_objects"])
    touched = np.unique(objects[top & (objects > 0)])
    labels[np.isin(objects, touched[touched > 0])] = 3
    return labels
