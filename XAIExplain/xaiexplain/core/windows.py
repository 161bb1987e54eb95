"""Sliding-window inference as MONAI's ``SlidingWindowInferer`` runs it, and a target's score window by window.

A segmentation network on a full-resolution scan runs on overlapping windows whose outputs are blended:
``out(v) = sum_w I(v - w) f(x_w)(v) / sum_w I(v - w)`` with the inferer's importance map ``I`` (constant or
Gaussian). :class:`SlidingWindows` lays the windows out exactly as ``monai.inferers.sliding_window_inference``
does (same padding, scan interval, slices and importance map: tested to agree with it), so a map explains the
segmentation the user sees, and never builds a full-volume autograd graph:

* a target's score is linear in the output (``SegmentationTarget``: the mean of a class over a region), so
  its gradient with respect to the blended output, ``G``, is fixed; window ``w`` contributes the score
  ``s_w = sum_v G(v) I(v - w) / W(v) f(x_w)(v)``, and ``score = sum_w s_w`` exactly;
* only windows where ``G`` is not zero (the target region's windows) are computed; each one's backward
  pass adds its input gradient into one full-volume buffer, so memory is one window's graph plus that
  buffer, whatever the scan's size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import XAIError
from .memory import free_memory

BLEND_MODES = ("constant", "gaussian")
PADDING_MODES = ("constant", "reflect", "replicate", "circular")
MAX_ROI = 1024  # voxels per axis of a window
KEPT_SHARE = 0.25  # of the free memory, for the unperturbed window outputs that boxes are compared with
SLIDING = ("SlidingWindowInferer", "SlidingWindowInfererAdapt")  # MONAI's inferers that these settings describe


@dataclass
class WindowSpec:
    """A sliding-window inferer's settings (the names of MONAI's ``SlidingWindowInferer``)."""

    roi_size: list[int]
    overlap: float = 0.25
    mode: str = "constant"
    sigma_scale: float = 0.125
    sw_batch_size: int = 1
    padding_mode: str = "constant"
    cval: float = 0.0

    @classmethod
    def from_dict(cls, data: dict) -> "WindowSpec":
        data = dict(data)
        if "_error" in data:  # a bundle's inferer that could not be read: said now that it is used
            raise XAIError(*data["_error"])
        target = str(data.pop("_target_", SLIDING[0])).split(".")[-1]
        if target not in SLIDING:
            raise XAIError(f"the inferer {target} is not a sliding-window inferer",
                           "give a SlidingWindowInferer's settings, or the windows: --window X Y Z")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise XAIError(f"unknown sliding-window settings {sorted(unknown)}",
                           f"use {', '.join(cls.__dataclass_fields__)}")
        if "roi_size" not in data:
            raise XAIError("a sliding-window inferer needs roi_size", "give the window size, e.g. --window 96 96 96")
        size = data["roi_size"]
        size = list(size) if isinstance(size, (list, tuple)) else [size] * 3
        if len(size) != 3 or not all(_whole(v) and 1 <= v <= MAX_ROI for v in size):
            raise XAIError(f"sliding-window roi_size {data['roi_size']!r} is not three whole numbers of voxels from "
                           f"1 to {MAX_ROI}", "give three, e.g. --window 96 96 96")
        spec = cls(**{**data, "roi_size": [int(v) for v in size]})
        checks = (("overlap", _number(spec.overlap) and 0 <= spec.overlap < 1, "a number from 0 up to (not) 1"),
                  ("mode", spec.mode in BLEND_MODES, f"one of {', '.join(BLEND_MODES)}"),
                  ("sigma_scale", _number(spec.sigma_scale) and spec.sigma_scale > 0, "a number above 0"),
                  ("sw_batch_size", _whole(spec.sw_batch_size) and spec.sw_batch_size >= 1, "a whole number >= 1"),
                  ("padding_mode", spec.padding_mode in PADDING_MODES, f"one of {', '.join(PADDING_MODES)}"),
                  ("cval", _number(spec.cval), "a number"))
        for name, good, kind in checks:
            if not good:
                raise XAIError(f"sliding-window {name}={getattr(spec, name)!r} is not {kind}", f"give {kind}")
        spec.overlap, spec.sigma_scale, spec.cval = float(spec.overlap), float(spec.sigma_scale), float(spec.cval)
        spec.sw_batch_size = int(spec.sw_batch_size)
        return spec

    def to_dict(self) -> dict:
        return asdict(self)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) < 1e30


def _whole(value) -> bool:
    return _number(value) and float(value) == int(value)


class Layout:
    """Where the windows of one spatial shape lie: MONAI's padding, slices, importance map and their sum."""

    def __init__(self, spec: WindowSpec, shape: tuple[int, ...], device, dtype=torch.float32):
        from monai.data.utils import compute_importance_map, dense_patch_slices

        roi = tuple(spec.roi_size)
        self.shape = tuple(shape)
        self.padded = tuple(max(s, r) for s, r in zip(shape, roi))
        self.pad = []  # F.pad order: the last axis first
        for s, r in reversed(list(zip(shape, roi))):
            diff = max(r - s, 0)
            self.pad += [diff // 2, diff - diff // 2]
        self.before = [self.pad[2 * (2 - a)] for a in range(3)]  # padding before each axis (X, Y, Z)
        self.crop = tuple(slice(self.before[a], self.before[a] + shape[a]) for a in range(3))
        interval = [r if r == p else max(int(r * (1 - spec.overlap)), 1) for r, p in zip(roi, self.padded)]
        self.roi, self.interval = roi, interval
        self.slices = dense_patch_slices(self.padded, roi, interval)
        self.importance = compute_importance_map(roi, mode=spec.mode, sigma_scale=spec.sigma_scale, device=device,
                                                 dtype=dtype)
        self.count = torch.zeros(self.padded, dtype=dtype, device=device)
        for window in self.slices:
            self.count[window] += self.importance

    def span(self, i: int) -> tuple:
        """Window ``i`` as an index of a (N, C, X, Y, Z) tensor on the padded grid."""
        return (slice(None), slice(None), *self.slices[i])

    def padded_input(self, x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
        if not any(self.pad):
            return x
        return F.pad(x, self.pad, mode=spec.padding_mode, value=spec.cval) if spec.padding_mode == "constant" \
            else F.pad(x, self.pad, mode=spec.padding_mode)

    def padded_map(self, values: torch.Tensor) -> torch.Tensor:
        """A (..., X, Y, Z) map on the padded grid, zero in the padding."""
        return F.pad(values, self.pad) if any(self.pad) else values

    def windows_per_box(self, box) -> int:
        """About how many windows a box of ``box`` voxels (per axis) lies in: per axis, the window starts within
        its extent plus a window's."""
        count = 1
        for r, i, p, b in zip(self.roi, self.interval, self.padded, box):
            along = len(range(0, max(p - r, 0) + 1, i)) + (1 if (p - r) % i else 0)
            count *= min(along, -(-(r + min(b, p) - 1) // i))
        return count

    def fold(self, values: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
        """A (1, C, ...) map on the padded grid brought onto the volume's: cropped, with what lies on padding that
        mirrors or repeats the volume added to the voxels it copies (the padding's own backward pass)."""
        if not any(self.pad):
            return values
        if spec.padding_mode == "constant":
            return values[(slice(None), slice(None), *self.crop)]
        with torch.enable_grad():
            leaf = torch.zeros((1, values.shape[1], *self.shape), dtype=values.dtype, device=values.device,
                               requires_grad=True)
            (folded,) = torch.autograd.grad(self.padded_input(leaf, spec), leaf, values)
        return folded

    def touching(self, support: torch.Tensor) -> list[int]:
        """The windows holding any voxel of the padded (X, Y, Z) boolean ``support``."""
        return [i for i, window in enumerate(self.slices) if bool(support[window].any())]


class SlidingWindows:
    """A network run window by window: its blended output, and a linear target's score and input gradient.

    ``predictor``: a batch of windows -> the network's output tensor on them."""

    def __init__(self, spec: WindowSpec, predictor):
        self.spec, self.predictor = spec, predictor
        self._layouts: dict = {}
        self._weights = None  # the last sample's output gradient on the padded grid, and its windows
        self._kept: dict = {}  # unperturbed window outputs (by window), for the boxes' differences, and their input
        self._kept_bytes = 0
        self.owner = None  # the LoadedModel whose network ``predictor`` calls
        self.computed = 0  # windows computed so far (each is one window's forward pass)

    def layout(self, x: torch.Tensor) -> Layout:
        key = (tuple(x.shape[2:]), x.device, x.dtype)
        if key not in self._layouts:
            if x.ndim != 5:
                raise XAIError(f"sliding windows need a 3-D volume; the model input is {tuple(x.shape)}",
                               "give a 3-D volume")
            self._layouts = {key: Layout(self.spec, key[0], x.device, x.dtype)}  # one shape per case
        return self._layouts[key]

    def first_window(self, x: torch.Tensor) -> torch.Tensor:
        """The first window of ``x``, padded as the inferer pads it: what the network itself is probed on."""
        layout = self.layout(x)
        return layout.padded_input(x, self.spec)[layout.span(0)]

    def _run(self, crops: list[torch.Tensor]) -> torch.Tensor:
        self.computed += len(crops)
        out = self.predictor(torch.cat(crops))
        if tuple(out.shape[2:]) != tuple(self.spec.roi_size):
            raise XAIError(f"the network's output on a {tuple(self.spec.roi_size)} window is {tuple(out.shape)}: "
                           "the explanation needs a voxelwise output of the window's size",
                           "use a segmentation network whose output grid is its input grid")
        return out

    def _batches(self, windows: list[int]):
        step = self.spec.sw_batch_size
        for start in range(0, len(windows), step):
            yield windows[start:start + step]

    def forward(self, x: torch.Tensor, windows: list[int] | None = None) -> torch.Tensor:
        """The blended output (N, K, X, Y, Z), as ``sliding_window_inference`` gives it, without autograd.

        ``windows``: only these (indices into the layout); the output is then exact on the voxels all of whose
        windows are among them (the target region's, when they are the windows touching it), else partial."""
        layout = self.layout(x)
        chosen = list(range(len(layout.slices))) if windows is None else windows
        outputs = []
        with torch.no_grad():
            for n in range(x.shape[0]):
                padded, total = layout.padded_input(x[n:n + 1], self.spec), None
                for batch in self._batches(chosen):
                    out = self._run([padded[layout.span(i)] for i in batch])
                    if total is None:
                        total = torch.zeros((1, out.shape[1], *layout.padded), dtype=x.dtype, device=x.device)
                    for row, i in enumerate(batch):
                        total[layout.span(i)] += out[row:row + 1] * layout.importance
                if total is None:
                    raise XAIError("no sliding window was chosen", "give a target region inside the volume")
                outputs.append((total / layout.count)[(slice(None), slice(None), *layout.crop)])
        return torch.cat(outputs)

    def weights(self, x: torch.Tensor, output_gradients: torch.Tensor, k: int = 0) -> tuple[Layout, torch.Tensor,
                                                                                             list[int]]:
        """(layout, sample ``k``'s output gradient (of ``output_gradients``, N x K x X x Y x Z) on the padded grid
        divided by the importance sum, the windows it touches) for the sample ``x`` (1, C, X, Y, Z)."""
        layout = self.layout(x)
        kept = self._weights
        # the same sample's for every step of a path; the entry holds the gradient, so no other can take its place
        if kept is None or kept[0] is not output_gradients or kept[1] != k or kept[2] is not layout:
            weights = layout.padded_map(output_gradients[k:k + 1]) / layout.count
            kept = self._weights = (output_gradients, k, layout, weights, layout.touching(weights[0].ne(0).any(0)))
        return layout, kept[3], kept[4]

    def release(self) -> None:
        """Forget what was kept for one run (the unperturbed window outputs, the last output gradient)."""
        self._weights, self._kept, self._kept_bytes = None, {}, 0

    def gradient(self, x: torch.Tensor, output_gradients: torch.Tensor, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(d score / d x, score) per row of ``x`` (B, C, X, Y, Z), where row b's score is linear in the blended
        output with gradient ``output_gradients[rows[b]]`` (K, X, Y, Z). One window's graph at a time."""
        grads, scores = torch.zeros_like(x), torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for n in range(x.shape[0]):
            k = n if rows is None else int(rows[n])
            layout, weights, touched = self.weights(x[n:n + 1], output_gradients, k)
            padded = layout.padded_input(x[n:n + 1].detach(), self.spec)
            grad = torch.zeros_like(padded)
            for batch in self._batches(touched):
                spans = [layout.span(i) for i in batch]
                with torch.enable_grad():
                    crops = torch.cat([padded[s] for s in spans]).requires_grad_(True)
                    out = self._run([crops])
                    seeds = torch.cat([weights[s] for s in spans]) * layout.importance
                    score = (out.float() * seeds).sum()
                    (crop_grad,) = torch.autograd.grad(score, crops)
                scores[n] += float(score.detach())
                for row, s in enumerate(spans):
                    grad[s] += crop_grad[row:row + 1]
            grads[n] = layout.fold(grad, self.spec)[0]
        return grads, scores

    def local_scores(self, x: torch.Tensor, output_gradients: torch.Tensor, n: int, reference: torch.Tensor,
                     values: torch.Tensor, starts, probabilities) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit, probability) changes of the target score from ``x``'s for copies of ``x`` (1, C, X, Y, Z),
        copy b with the box at ``starts[b]`` holding ``values[b]``: only the target's windows that overlap the box
        run again.

        The blended output changes by ``sum_w I (f(x'_w) - f(x_w)) / W`` on those windows; the logit score by
        that change weighted by the output gradient, the probability score by its ``probabilities`` (a function
        of the output, voxel by voxel) over the windows' extent. ``x`` is sample ``n``, of ``output_gradients``
        (N, K, X, Y, Z); ``reference``: the blended output at ``x``."""
        layout, weights, touched = self.weights(x, output_gradients, n)
        padded = layout.padded_input(x, self.spec)
        gradient, blended = layout.padded_map(output_gradients[n:n + 1]), layout.padded_map(reference)
        size = values.shape[2:]
        offsets = layout.before
        logits, probs = [], []
        for b, begin in enumerate(starts.tolist()):
            lo = [int(v) + o for v, o in zip(begin, offsets)]
            hits = [i for i in touched if all(w.start < lo[a] + size[a] and lo[a] < w.stop
                                              for a, w in enumerate(layout.slices[i]))]
            if not hits:  # no window on the target sees the box
                logits.append(0.0)
                probs.append(0.0)
                continue
            extent = tuple(slice(min(layout.slices[i][a].start for i in hits),
                                 max(layout.slices[i][a].stop for i in hits)) for a in range(3))
            change = torch.zeros((1, reference.shape[1], *(e.stop - e.start for e in extent)), dtype=x.dtype,
                                 device=x.device)
            logit = 0.0
            for batch in self._batches(hits):
                crops = []
                for i in batch:
                    crop = padded[layout.span(i)].clone()
                    inside = tuple(slice(max(lo[a], w.start) - w.start, min(lo[a] + size[a], w.stop) - w.start)
                                   for a, w in enumerate(layout.slices[i]))
                    part = tuple(slice(max(lo[a], w.start) - lo[a], min(lo[a] + size[a], w.stop) - lo[a])
                                 for a, w in enumerate(layout.slices[i]))
                    crop[(slice(None), slice(None), *inside)] = values[(slice(b, b + 1), slice(None), *part)]
                    crops.append(crop)
                with torch.no_grad():
                    before = torch.cat([self._unperturbed(x, padded, layout, i) for i in batch])
                    diffs = self._run(crops).float() - before
                for row, i in enumerate(batch):
                    span = layout.span(i)
                    step = diffs[row:row + 1] * layout.importance
                    logit += float((weights[span].double() * step).sum())
                    within = tuple(slice(w.start - e.start, w.stop - e.start)
                                   for w, e in zip(layout.slices[i], extent))
                    change[(slice(None), slice(None), *within)] += step / layout.count[layout.slices[i]]
            region = (slice(None), slice(None), *extent)
            old = blended[region]
            probs.append(float((gradient[region].double() * (probabilities(old + change) - probabilities(old))).sum()))
            logits.append(logit)
        return torch.tensor(logits, dtype=torch.float64), torch.tensor(probs, dtype=torch.float64)

    def _unperturbed(self, x: torch.Tensor, padded: torch.Tensor, layout: Layout, i: int) -> torch.Tensor:
        """Window ``i``'s output on the unperturbed input ``x``, kept for the next box that overlaps it while all
        that is kept stays under KEPT_SHARE of the memory free when the first was kept (else computed again)."""
        if self._kept.get("input") is not x or self._kept.get("version") != x._version:
            self._kept_bytes = 0  # another input, or this one changed: nothing kept holds for it
            self._kept = {"input": x, "version": x._version, "budget": KEPT_SHARE * free_memory(x.device)}
        if i in self._kept:
            return self._kept[i]
        with torch.no_grad():
            out = self._run([padded[layout.span(i)]]).float()
        size = out.numel() * out.element_size()
        if self._kept_bytes + size <= self._kept["budget"]:
            self._kept[i], self._kept_bytes = out, self._kept_bytes + size
        return out

    def boxes_exact(self, x: torch.Tensor) -> bool:
        """Whether ``local_scores`` equals full inference of the pasted copies: not where the padding mirrors or
        repeats the volume (a box at its border would be mirrored into the padding too)."""
        return self.spec.padding_mode == "constant" or not any(self.layout(x).pad)

    def describe(self, x: torch.Tensor) -> dict:
        layout = self.layout(x)
        return {**self.spec.to_dict(), "windows": len(layout.slices), "padded_to": list(layout.padded)}
