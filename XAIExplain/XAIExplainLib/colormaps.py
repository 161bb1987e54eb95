"""Heatmap colour tables, made in code so that Slicer and the tests use the very same nodes.

Unsigned maps use an Inferno-like ramp (black-purple-orange-yellow, perceptually
ordered); maps of the prediction itself (probability, entropy, uncertainty) a
Viridis-like one (purple-teal-yellow), so they are not read as evidence. Signed maps use a diverging blue-white-red ramp whose centre is
transparent: values whose magnitude is under the threshold do not hide the
anatomy. The transparent band is a property of each signed result's own table,
so each result keeps its own threshold.
"""
from __future__ import annotations

import numpy as np

ENTRIES = 256
INFERNO_NAME = "XAIExplain Inferno"
VIRIDIS_NAME = "XAIExplain Viridis"
DIVERGING_NAME = "XAIExplain DivergingBlueRed"

# Inferno sampled at 9 even steps (the colormap is public domain, CC0).
_INFERNO_STOPS = np.array([
    [0.001, 0.000, 0.014], [0.129, 0.047, 0.291], [0.342, 0.062, 0.429], [0.541, 0.135, 0.415],
    [0.736, 0.216, 0.330], [0.894, 0.353, 0.194], [0.978, 0.558, 0.035], [0.975, 0.798, 0.206],
    [0.988, 0.998, 0.645]])
# Viridis sampled at 9 even steps (the colormap is public domain, CC0).
_VIRIDIS_STOPS = np.array([
    [0.267, 0.005, 0.329], [0.283, 0.141, 0.458], [0.254, 0.265, 0.530], [0.207, 0.372, 0.553],
    [0.164, 0.471, 0.558], [0.128, 0.567, 0.551], [0.135, 0.659, 0.518], [0.478, 0.821, 0.318],
    [0.993, 0.906, 0.144]])
_BLUE = np.array([0.230, 0.299, 0.754])
_WHITE = np.array([0.950, 0.950, 0.950])
_RED = np.array([0.706, 0.016, 0.150])


def _ramp(stops_rgb: np.ndarray, n: int) -> np.ndarray:
    x = np.linspace(0.0, 1.0, n)
    stops = np.linspace(0.0, 1.0, len(stops_rgb))
    return np.stack([np.interp(x, stops, stops_rgb[:, c]) for c in range(3)], axis=1)


def infernoRgb(n: int = ENTRIES) -> np.ndarray:
    """(n, 3) RGB in [0, 1], linear interpolation between the stops."""
    return _ramp(_INFERNO_STOPS, n)


def viridisRgb(n: int = ENTRIES) -> np.ndarray:
    return _ramp(_VIRIDIS_STOPS, n)


def divergingRgb(n: int = ENTRIES) -> np.ndarray:
    """(n, 3) blue -> white -> red."""
    x = np.linspace(-1.0, 1.0, n)[:, None]
    return np.where(x < 0, _WHITE + (-x) * (_BLUE - _WHITE), _WHITE + x * (_RED - _WHITE))


def divergingAlpha(transparentFraction: float, n: int = ENTRIES) -> np.ndarray:
    """Opacity per entry: 0 where |x| < transparentFraction (x in [-1, 1]), 1 beyond a short soft edge."""
    x = np.abs(np.linspace(-1.0, 1.0, n))
    edge = 2.0 / (n - 1)  # one entry wide: no visible step, but nothing under the threshold shows
    return np.clip((x - transparentFraction) / edge, 0.0, 1.0)


def _fillTable(node, rgb: np.ndarray, alpha: np.ndarray) -> None:
    node.SetTypeToUser()
    node.SetNumberOfColors(len(rgb))
    node.GetLookupTable().SetTableRange(0, len(rgb) - 1)
    for i, ((r, g, b), a) in enumerate(zip(rgb, alpha)):
        node.SetColor(i, "", float(r), float(g), float(b), float(a))
    node.Modified()


def _table(scene, name: str, description: str):
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing, False
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetAttribute("Category", "XAIExplain")
    node.SetDescription(description)
    return node, True


def infernoColorNode(scene):
    """The shared Inferno table (created once per scene; opaque: thresholding is done by the display node)."""
    node, created = _table(scene, INFERNO_NAME, "Unsigned attribution maps: low (black) to high (yellow)")
    if created:
        _fillTable(node, infernoRgb(), np.ones(ENTRIES))
    return node


def viridisColorNode(scene):
    """The shared Viridis table, for maps of the prediction (probability, entropy, uncertainty)."""
    node, created = _table(scene, VIRIDIS_NAME, "Prediction maps: probability, entropy, uncertainty (low to high)")
    if created:
        _fillTable(node, viridisRgb(), np.ones(ENTRIES))
    return node


def divergingColorNode(scene, name: str, transparentFraction: float):
    """A signed result's own table: blue (negative) - transparent centre - red (positive)."""
    node, _ = _table(scene, name, "Signed attribution maps: negative (blue), positive (red); "
                                  "magnitudes under the threshold are transparent")
    setTransparentCentre(node, transparentFraction)
    return node


def setTransparentCentre(node, transparentFraction: float) -> None:
    fraction = float(np.clip(transparentFraction, 0.0, 1.0))
    _fillTable(node, divergingRgb(), divergingAlpha(fraction))
    node.SetAttribute("XAIExplain.transparentFraction", f"{fraction:.6g}")
