"""Occlusion: replace a 3D window, or one anatomical region, by a baseline and measure the drop of the target."""
from __future__ import annotations

import itertools

import torch

from ..core.baselines import baseline_for, describe_baseline
from .base import BASELINE, Method, register
from .machinery.perturbation import SCORES, box, check_score, compose, region_index, region_scores_map
from .machinery.scoring import Scorer, incremental_share


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window origins along one axis: every ``stride`` voxels, plus one flush with the end so all voxels are covered."""
    window = min(window, size)
    starts = list(range(0, size - window + 1, max(1, stride)))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def _triple(value) -> tuple[int, int, int]:
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3)]
    return tuple(values) if len(values) == 3 else (values[0],) * 3


def windows(shape, window, stride) -> list[tuple[slice, slice, slice]]:
    window, stride = _triple(window), _triple(stride)
    axes = [[slice(s, s + min(w, n)) for s in window_starts(n, w, st)] for n, w, st in zip(shape, window, stride)]
    return list(itertools.product(*axes))


def window_bounds(spots, device) -> torch.Tensor:
    """(windows, 3, 2) tensor: each window's start and stop along each axis."""
    return torch.tensor([[[w[a].start, w[a].stop] for a in range(3)] for w in spots], device=device)


def changed_windows(x: torch.Tensor, base: torch.Tensor, bounds: torch.Tensor) -> list[int]:
    """Indices of the windows where the baseline differs from ``x`` (1, C, X, Y, Z) in at least one voxel.

    Counted for all windows at once from a summed-volume table, without a pass or a sync per window."""
    changed = (x[0] != base[0]).any(0).to(torch.int64)
    table = torch.nn.functional.pad(changed.cumsum(0).cumsum(1).cumsum(2), (1, 0, 1, 0, 1, 0))
    count = torch.zeros(bounds.shape[0], dtype=torch.int64, device=x.device)
    for corner in itertools.product((0, 1), repeat=3):  # inclusion-exclusion over the box's 8 corners
        sign = -1 if (3 - sum(corner)) % 2 else 1
        count += sign * table[bounds[:, 0, corner[0]], bounds[:, 1, corner[1]], bounds[:, 2, corner[2]]]
    return torch.nonzero(count > 0).flatten().tolist()


def refinement_windows(shape, window, stride, refine: int) -> list[tuple]:
    """Per refinement level: (window, stride, its windows relative to the last level's best window);
    window and stride halve at each level."""
    levels, window, stride = [], _triple(window), _triple(stride)
    for _ in range(int(refine)):
        if min(window) < 2:
            break
        extent = tuple(min(w, n) for w, n in zip(window, shape))  # the last level's window, searched again
        window, stride = tuple(max(1, w // 2) for w in extent), tuple(max(1, s // 2) for s in stride)
        levels.append((window, stride, windows(extent, window, stride)))
    return levels


def mean_drop_map(shape, spots, drops) -> torch.Tensor:
    """Each voxel: the mean drop of the windows covering it (0 where none does)."""
    total = torch.zeros(shape, dtype=torch.float64)
    count = torch.zeros(shape, dtype=torch.float64)
    for w, drop in zip(spots, drops.tolist()):
        total[w] += drop
        count[w] += 1
    return total / count.clamp(min=1)


def region_boxes(compact: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last voxel (count, 3) of each region index 1..count along each axis, on the CPU."""
    index = compact.flatten().cpu()
    lows, highs = [], []
    for axis, size in enumerate(compact.shape):
        shape = [1] * compact.dim()
        shape[axis] = size
        coord = torch.arange(size).view(shape).expand(compact.shape).flatten()
        lows.append(torch.full((count + 1,), size).scatter_reduce(0, index, coord, "amin")[1:])
        highs.append(torch.full((count + 1,), -1).scatter_reduce(0, index, coord, "amax")[1:])
    return torch.stack(lows, 1), torch.stack(highs, 1)


def region_removed(x, base, compact, regions, starts, size) -> torch.Tensor:
    """Per region index in ``regions``: the box at its row of ``starts`` of ``x`` with that region set to ``base``."""
    crops = []
    for region, begin in zip(regions.tolist(), starts.tolist()):
        where = box(begin, size)
        crops.append(torch.where(compact[where] == region, base[(0, slice(None), *where)], x[(0, slice(None), *where)]))
    return torch.stack(crops)


class PatchOcclusion(Method):
    """Sliding-window occlusion; with ``refine`` > 0, a coarse-to-fine search for the peak.

    The grid's map is each voxel's mean drop over the windows covering it (the map MONAI's
    OcclusionSensitivity and Captum's Occlusion give). A window larger than a small lesion
    leaves every window that contains it with the same drop, so the peak is only known to a
    window's slack. Each refinement level halves window and stride inside the best window of
    the level before and adds its mean-drop map there: the peak sharpens onto the part whose
    removal matters most, for a few dozen passes per level.
    """

    name, title, family = "occlusion", "Patch occlusion (3D sliding window)", "perturbation"
    needs_gradients = False
    defaults = {"window": 16, "stride": 8, "refine": 2, "baseline": "blur", "score": "probability",
                "batch_size": None}
    bounds = {"window": (1, None), "stride": (1, None), "refine": (0, 8), "baseline": BASELINE,
              "score": SCORES, "batch_size": (1, None)}
    reference = "Zeiler & Fergus 2014"

    def cost(self, params):
        return {"forward": 1, "backward": 0, "per": "window"}

    def time_factor(self, model, device):
        return incremental_share(model, device)

    def estimate(self, params, shape, n_regions=0):
        levels = refinement_windows(shape, params["window"], params["stride"], params["refine"])
        return {"forward": len(windows(shape, params["window"], params["stride"])) + 1
                + sum(len(spots) for _, _, spots in levels), "backward": 0}

    def run(self, ctx, window, stride, refine, baseline, score, batch_size):
        check_score(score)
        base_all = baseline_for(ctx.x, baseline)
        shape = tuple(ctx.x.shape[2:])
        spots = windows(shape, window, stride)
        levels = refinement_windows(shape, window, stride, refine)
        bounds = window_bounds(spots, ctx.x.device)
        maps, info = [], {}
        for n in range(ctx.x.shape[0]):
            x, base = ctx.x[n:n + 1], base_all[n:n + 1]
            # A window where the baseline equals the input changes nothing: its drop is exactly 0, no pass needed.
            todo = changed_windows(x, base, bounds)
            scorer = Scorer(ctx, n, len(todo) + sum(len(level) for _, _, level in levels), batch_size, "occlusion")

            def drops_of(bounds, chosen):
                """Drop of the target for the ``chosen`` windows of ``bounds`` (0 for the others)."""
                drops = torch.zeros(bounds.shape[0], dtype=torch.float64)
                size = (bounds[0, :, 1] - bounds[0, :, 0]).tolist()  # every window of a level has one size
                for part in scorer.slices(len(chosen)):
                    starts = bounds[chosen[part], :, 0].cpu()
                    values = torch.stack([base[(0, slice(None), *box(b, size))] for b in starts.tolist()])
                    logits, probs = scorer.local(values, starts)
                    drops[chosen[part]] = scorer.reference(score) - scorer.pick(logits, probs, score)
                return drops

            drops = drops_of(bounds, todo)
            result = mean_drop_map(shape, spots, drops)
            best, refined = spots[int(torch.argmax(drops))], []
            for level_window, level_stride, relative in levels:
                origin = [w.start for w in best]
                inner = [tuple(slice(o + w.start, o + w.stop) for o, w in zip(origin, spot)) for spot in relative]
                level_drops = drops_of(window_bounds(inner, x.device), list(range(len(inner))))
                result += mean_drop_map(shape, inner, level_drops)
                best = inner[int(torch.argmax(level_drops))]
                refined.append({"window": list(level_window), "stride": list(level_stride), "windows": len(inner),
                                "best": [[w.start, w.stop] for w in best],
                                "best_drop": float(level_drops.max())})
            maps.append(result.float()[None, None])
            info = {**scorer.facts, "windows": len(spots), "skipped_unchanged": len(spots) - len(todo),
                    "window": list(_triple(window)), "stride": list(_triple(stride)), "refined": refined,
                    "baseline": describe_baseline(baseline), "score": score,
                    "map": f"mean drop of the target {score} over the windows covering each voxel"
                           + (", plus each refinement level's inside its box" if refined else "")}
        return torch.cat(maps).to(ctx.x.device), info


class RegionOcclusion(Method):
    name, title, family = "occlusion-regions", "Region occlusion (one anatomical region at a time)", "perturbation"
    needs_gradients, needs_regions = False, True
    defaults = {"baseline": "blur", "score": "probability", "keep_only": False, "batch_size": None}
    bounds = {"baseline": BASELINE, "score": SCORES, "batch_size": (1, None)}
    reference = "Zeiler & Fergus 2014; Ribeiro et al. 2016 (feature ablation)"

    def cost(self, params):
        return {"forward": 2 if params["keep_only"] else 1, "backward": 0, "per": "region"}

    def time_factor(self, model, device):
        return incremental_share(model, device)

    def estimate(self, params, shape, n_regions=0):
        return {"forward": n_regions * (2 if params["keep_only"] else 1) + 1 + int(params["keep_only"]), "backward": 0}

    def run(self, ctx, baseline, score, keep_only, batch_size):
        check_score(score)
        base_all = baseline_for(ctx.x, baseline)
        compact, ids = region_index(ctx)
        k = len(ids)
        shape = tuple(ctx.x.shape[2:])
        lows, highs = region_boxes(compact, k)
        sizes = highs - lows + 1
        # Rows of "keep" masks: first each region removed, then (keep_only) each region alone and none at all.
        keep = ~torch.eye(k, dtype=torch.bool)
        if keep_only:
            keep = torch.cat([keep, torch.eye(k, dtype=torch.bool), torch.zeros(1, k, dtype=torch.bool)])
        keep = keep.to(ctx.x.device)
        maps, scores, columns = [], [], []
        for n in range(ctx.x.shape[0]):
            x, base = ctx.x[n:n + 1], base_all[n:n + 1]
            scorer = Scorer(ctx, n, len(keep), batch_size, "region occlusion")
            logits = torch.zeros(len(keep), dtype=torch.float64)
            probs = torch.zeros(len(keep), dtype=torch.float64)
            # Each region removed changes only its bounding box: score those locally, similar boxes batched.
            order = torch.argsort(sizes.prod(1), stable=True)
            for part in scorer.slices(k):
                chosen = order[part]
                size = sizes[chosen].amax(0)
                starts = torch.minimum(lows[chosen], torch.tensor(shape) - size)
                logits[chosen], probs[chosen] = scorer.local(
                    region_removed(x, base, compact, chosen + 1, starts, size.tolist()), starts)
            for part in scorer.slices(len(keep) - k):  # each region alone, and none: whole volumes
                rows = slice(k + part.start, k + part.stop)
                logits[rows], probs[rows] = scorer(compose(x, base, compact, keep[rows]))
            logit_drop = (scorer.logit - logits[:k]).numpy()
            prob_drop = (scorer.probability - probs[:k]).numpy()
            chosen = prob_drop if score == "probability" else logit_drop
            maps.append(region_scores_map(compact, chosen))
            scores.append({ids[i]: float(chosen[i]) for i in range(k)})
            table = {"probability_drop": {ids[i]: float(prob_drop[i]) for i in range(k)},
                     "logit_drop": {ids[i]: float(logit_drop[i]) for i in range(k)}}
            if keep_only:
                alone_p, alone_l = probs[k:2 * k] - probs[2 * k], logits[k:2 * k] - logits[2 * k]
                table["kept_alone_probability_gain"] = {ids[i]: float(alone_p[i]) for i in range(k)}
                table["kept_alone_logit_gain"] = {ids[i]: float(alone_l[i]) for i in range(k)}
            columns.append(table)
            info = {**scorer.facts, "regions_scored": k, "baseline": describe_baseline(baseline), "score": score,
                    "keep_only": bool(keep_only),
                    "unperturbed": {"probability": scorer.probability, "logit": scorer.logit},
                    "map": f"each region painted with the drop of the target {score} when replaced by the baseline"}
        return torch.cat(maps), {**info, "region_scores": scores, "region_columns": columns}


register(PatchOcclusion, ("patch-occlusion",))
register(RegionOcclusion, ("region-occlusion",))
