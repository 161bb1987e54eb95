"""Occlusion: replace a 3D window, or one anatomical region, by a baseline and measure the drop of the target."""
from __future__ import annotations

import itertools
import math

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


def lattice_of(shape, window, stride) -> tuple[int, int, int]:
    """How many window positions along each axis."""
    return tuple(len(window_starts(n, w, st)) for n, w, st in zip(shape, _triple(window), _triple(stride)))


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


MAX_COARSE_STEP = 4
SAMPLED_SHARE, SAMPLED_MIN = 0.05, 8  # of the windows left to interpolation, scored to measure its error


def _interpolation_matrix(n: int, known: list[int]) -> torch.Tensor:
    """(n, len(known)) weights of linear interpolation along one lattice axis from the ``known`` indices."""
    weights = torch.zeros(n, len(known), dtype=torch.float64)
    for i in range(n):
        right = next(j for j, k in enumerate(known) if k >= i)
        if known[right] == i or right == 0:
            weights[i, right] = 1.0
        else:
            left = right - 1
            t = (i - known[left]) / (known[right] - known[left])
            weights[i, left], weights[i, right] = 1 - t, t
    return weights


def coarse_steps(window, stride) -> tuple[int, int, int]:
    """Per axis, every how many window positions the coarse pass scores: windows at that step must still touch
    or overlap (step x stride <= window), so every voxel lies in a scored window and nothing can hide between
    them (tiling windows: 1, every position); at most MAX_COARSE_STEP."""
    return tuple(max(1, min(MAX_COARSE_STEP, w // max(1, st))) for w, st in zip(_triple(window), _triple(stride)))


def coarse_lattice(lattice, steps) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Every ``steps``-th window position per axis (the last one kept), and the matrices that interpolate from
    them."""
    known = [sorted(set(range(0, n, k)) | {n - 1}) for n, k in zip(lattice, steps)]
    return known, [_interpolation_matrix(n, k) for n, k in zip(lattice, known)]


def interpolated(coarse: torch.Tensor, matrices) -> torch.Tensor:
    """The coarse lattice's drops (k0, k1, k2) interpolated onto the whole lattice (n0, n1, n2), separably."""
    return torch.einsum("ai,bj,ck,ijk->abc", *matrices, coarse)


def _ring(index, lattice):
    """The lattice positions next to ``index`` (26-neighbourhood)."""
    for step in itertools.product((-1, 0, 1), repeat=3):
        near = tuple(i + d for i, d in zip(index, step))
        if any(step) and all(0 <= i < n for i, n in zip(near, lattice)):
            yield near


def mean_drop_map(shape, spots, drops) -> torch.Tensor:
    """Each voxel: the mean drop of the windows covering it (0 where none does)."""
    total = torch.zeros(shape, dtype=torch.float64)
    count = torch.zeros(shape, dtype=torch.float64)
    for w, drop in zip(spots, drops.tolist()):
        total[w] += drop
        count[w] += 1
    return total / count.clamp(min=1)


MERGE = 2  # windows per axis that one window of the next coarser level covers (tiling windows' drill-down)
# Levels a drill-down needs to pay: with two (4 windows per axis) the merged windows, large boxes, took 0.7-1.15x
# the time of scoring every window on the demo (CPU); with three (8 per axis) 3.0x less (measured)
MIN_LEVELS = 3


def merged_lattices(lattice) -> list[tuple[int, ...]]:
    """The window lattice and its coarser levels, finest first: each level's window covers MERGE^3 of the
    level below (fewer at the ends), until no axis has more than MERGE."""
    levels = [tuple(lattice)]
    while max(levels[-1]) > MERGE:
        levels.append(tuple(-(-n // MERGE) for n in levels[-1]))
    return levels


def merged_bounds(bounds: torch.Tensor, lattice, level: int) -> torch.Tensor:
    """(cells, 3, 2) bounds of the windows of coarser level ``level`` (``merged_lattices`` order): each the box
    around the level-0 windows it covers."""
    fine = bounds.view(*lattice, 3, 2)
    factor = MERGE ** level
    cells = itertools.product(*[range(-(-n // factor)) for n in lattice])
    out = []
    for cell in cells:
        first = tuple(c * factor for c in cell)
        last = tuple(min((c + 1) * factor, n) - 1 for c, n in zip(cell, lattice))
        out.append(torch.stack([fine[first][:, 0], fine[last][:, 1]], 1))
    return torch.stack(out)


def approximation(lattice, steps) -> str | None:
    """How the approximate mode skips windows on this lattice: "lattice" (overlapping windows: a coarse lattice,
    interpolated), "merged" (tiling windows, enough to merge: drilled down from merged windows) or None (every
    window scored)."""
    if max(steps) > 1:
        return "lattice"
    return "merged" if len(merged_lattices(lattice)) >= MIN_LEVELS else None


def merged_passes(lattice) -> int:
    """The windows a drill-down from merged windows scores when one window per level holds the evidence: the
    coarsest level, MERGE^3 parts per level below, the sample (more where the evidence spreads)."""
    levels, count = merged_lattices(lattice), math.prod(lattice)
    return math.prod(levels[-1]) + MERGE ** 3 * (len(levels) - 1) + max(SAMPLED_MIN, int(SAMPLED_SHARE * count))


def _checked_guess(exact, drops, guess, done, changed, tolerance, facts) -> tuple[torch.Tensor, dict]:
    """The approximate drops: exact where ``done``, else ``guess``, checked on a seeded sample of the guessed
    windows scored exactly (``exact(indices)`` fills ``drops``). Where the map has no structure to guess from
    (an untrained network's), the sampled error exceeds the tolerance and every window is scored: the map is
    then exact, and says so."""
    left = torch.nonzero(~done & changed).flatten()
    sample = left[torch.randperm(len(left), generator=torch.Generator().manual_seed(0))[:max(
        SAMPLED_MIN, int(SAMPLED_SHARE * len(left)))]].tolist()
    exact(sample)
    done[sample] = True
    error = float((drops[sample] - guess[sample]).pow(2).mean().sqrt() / drops[done].pow(2).mean().sqrt().clamp(
        min=1e-12)) if sample else 0.0
    facts = {**facts, "sampled_windows": len(sample), "sampled_error": round(error, 4),
             "error": "RMS of exact - approximated drop over a seeded sample of the approximated windows, over the "
                      "RMS of the exact drops"}
    if error > tolerance:
        exact(torch.nonzero(~done & changed).flatten().tolist())
        done[:] = True
        facts["why"] = f"the sampled error {error:.2f} is over the tolerance: every window scored exactly"
    drops = torch.where(done, drops, guess)
    drops[~changed] = 0.0  # a window where the baseline equals the input changes nothing, exactly
    return drops, {**facts, "exact_windows": int(done.sum()), "interpolated_windows": int((~done).sum())}


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

    ``approximate``: overlapping windows are scored on a coarse lattice and interpolated
    (:meth:`_approximate`), tiling ones drilled down from merged windows (:meth:`_drill_down`);
    both then checked on a seeded sample, and scored exactly where that check fails.
    """

    name, title, family = "occlusion", "Patch occlusion (3D sliding window)", "perturbation"
    needs_gradients = False
    defaults = {"window": 16, "stride": 8, "refine": 2, "baseline": "blur", "score": "probability",
                "batch_size": None, "approximate": False, "tolerance": 0.2, "drill": 0.02}
    bounds = {"window": (1, None), "stride": (1, None), "refine": (0, 8), "baseline": BASELINE,
              "score": SCORES, "batch_size": (1, None), "tolerance": (0.0, 1.0), "drill": (0.0, 1.0)}
    reference = "Zeiler & Fergus 2014"

    def cost(self, params):
        return {"forward": 1, "backward": 0, "per": "window"}

    def time_factor(self, model, device):
        return incremental_share(model, device)

    def estimate(self, params, shape, n_regions=0):
        levels = refinement_windows(shape, params["window"], params["stride"], params["refine"])
        count = len(windows(shape, params["window"], params["stride"]))
        lattice, steps = lattice_of(shape, params["window"], params["stride"]), coarse_steps(params["window"],
                                                                                             params["stride"])
        how = approximation(lattice, steps) if params["approximate"] else None
        if how == "lattice":  # the coarse lattice and the first drill-down round
            known, _ = coarse_lattice(lattice, steps)
            count = min(count, len(list(itertools.product(*known))) + int(params["drill"] * count))
        elif how == "merged":  # the coarsest level, one window refined per level below, the sample
            count = min(count, merged_passes(lattice))
        return {"forward": count + 1 + sum(len(spots) for _, _, spots in levels), "backward": 0}

    def run(self, ctx, window, stride, refine, baseline, score, batch_size, approximate, tolerance, drill):
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
            scorer = Scorer(ctx, n, len(todo) + sum(len(level) for _, _, level in levels), batch_size, "occlusion",
                            approximate=tolerance if approximate else None)

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

            steps, lattice = coarse_steps(window, stride), lattice_of(shape, window, stride)
            how = approximation(lattice, steps) if approximate else None
            if how == "lattice":
                drops, facts = self._approximate(drops_of, scorer, bounds, todo, lattice, steps, tolerance, drill)
                info["approximate"] = facts
            elif how == "merged":
                drops, facts = self._drill_down(drops_of, scorer, bounds, todo, lattice, tolerance, drill)
                info["approximate"] = facts
            else:
                drops = drops_of(bounds, todo)
                if approximate:
                    info["approximate"] = {"coarse_steps": [1, 1, 1], "exact_windows": len(spots),
                                           "interpolated_windows": 0, "why": f"{len(spots)} tiling windows, at most "
                                           f"{MERGE ** (MIN_LEVELS - 1)} per axis: too few to merge (merged "
                                           "windows would cost about what they save)"}
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
            info = {**scorer.facts, **info, "windows": len(spots), "skipped_unchanged": len(spots) - len(todo),
                    "window": list(_triple(window)), "stride": list(_triple(stride)), "refined": refined,
                    "baseline": describe_baseline(baseline), "score": score,
                    "map": f"mean drop of the target {score} over the windows covering each voxel"
                           + (", plus each refinement level's inside its box" if refined else "")}
        return torch.cat(maps).to(ctx.x.device), info

    @staticmethod
    def _drill_down(drops_of, scorer, bounds, todo, lattice, tolerance, drill):
        """Drops of tiling windows from a share of them (after Krypton's adaptive drill-down): windows merging MERGE^3
        of the level below, from the coarsest level down; a window's MERGE^3 parts are scored exactly where its
        drop is over ``tolerance`` of the largest one or among the top ``drill`` share of its level, else each
        part gets the drop times its share of the volume."""
        changed = torch.zeros(bounds.shape[0], dtype=torch.bool)
        changed[todo] = True
        levels = merged_lattices(lattice)
        later = scorer.total - len(todo)  # the refinement levels' windows
        scorer.total = merged_passes(lattice) + later  # progress: a guess until the drill-down ends

        def scored(level_bounds, chosen) -> torch.Tensor:
            """Exact drops of the ``chosen`` windows of one level (by size: one size per batch)."""
            out = torch.zeros(level_bounds.shape[0], dtype=torch.float64)
            sizes = (level_bounds[:, :, 1] - level_bounds[:, :, 0]).tolist()
            for size in {tuple(sizes[i]) for i in chosen}:
                same = [i for i in chosen if tuple(sizes[i]) == size]
                scorer.total = max(scorer.total, scorer.done + len(same) + later)
                out[same] = drops_of(level_bounds, same)[same]
            return out

        top = len(levels) - 1
        level_bounds = [bounds] + [merged_bounds(bounds, lattice, level) for level in range(1, top + 1)]
        cells = [list(itertools.product(*[range(n) for n in lat])) for lat in levels]
        volumes = [(b[:, :, 1] - b[:, :, 0]).prod(1).double().view(*lat) for b, lat in zip(level_bounds, levels)]
        fine_changed = changed.view(*lattice)
        touched = lambda level, cell: bool(fine_changed[tuple(slice(c * MERGE ** level, (c + 1) * MERGE ** level)
                                                               for c in cell)].any())
        known = {cell: exact for cell, exact in zip(cells[top], scored(level_bounds[top], [
            i for i, cell in enumerate(cells[top]) if touched(top, cell)]).tolist())}
        is_exact = {cell: touched(top, cell) for cell in cells[top]}
        scale = max((abs(v) for v in known.values()), default=0.0) or 1.0
        counts = [len(known)]
        for level in range(top - 1, -1, -1):
            ranked = sorted((c for c in known if is_exact[c]), key=lambda c: -abs(known[c]))
            refine = {c for c in ranked if abs(known[c]) > tolerance * scale} | set(ranked[:max(1, int(
                drill * len(ranked)))])
            guess, exact_cells = {}, []
            for cell in cells[level]:
                parent = tuple(c // MERGE for c in cell)
                if parent in refine and touched(level, cell):
                    exact_cells.append(cell)
                else:
                    guess[cell] = known[parent] * float(volumes[level][cell] / volumes[level + 1][parent])
            flat = {cell: i for i, cell in enumerate(cells[level])}
            values = scored(level_bounds[level], [flat[c] for c in exact_cells])
            known = {**guess, **{c: float(values[flat[c]]) for c in exact_cells}}
            exact_set = set(exact_cells)
            is_exact = {cell: cell in exact_set for cell in cells[level]}
            scale = max([scale] + [abs(known[c]) for c in exact_cells])
            counts.append(len(exact_cells))
        order = cells[0]
        drops = torch.tensor([known[c] if is_exact[c] else 0.0 for c in order], dtype=torch.float64)
        guessed = torch.tensor([known[c] for c in order], dtype=torch.float64)
        done = torch.tensor([is_exact[c] for c in order])

        def exact(chosen):
            if chosen:
                drops[chosen] = scored(bounds, chosen)[chosen]

        facts = {"coarse_steps": [1, 1, 1], "tolerance": tolerance, "drill": drill,
                 "merged_levels": [list(n) for n in levels], "exact_per_level": counts[::-1]}
        return _checked_guess(exact, drops, guessed, done, changed, tolerance, facts)

    @staticmethod
    def _approximate(drops_of, scorer, bounds, todo, lattice, steps, tolerance, drill):
        """Drops of every window from a share of them (adaptive drill-down, in the spirit of Krypton).

        Exact on every ``steps``-th lattice position per axis, linearly interpolated between; then exact where
        the map is high (the top ``drill`` share of the interpolated |drop|) and, ring by ring, around every
        exact position whose interpolation missed by more than ``tolerance`` of the largest drop."""
        changed = torch.zeros(bounds.shape[0], dtype=torch.bool)
        changed[todo] = True
        known, matrices = coarse_lattice(lattice, steps)
        flat = lambda index: (index[0] * lattice[1] + index[1]) * lattice[2] + index[2]  # windows() order
        unravel = lambda i: (i // (lattice[1] * lattice[2]), i // lattice[2] % lattice[1], i % lattice[2])
        coarse = [flat(i) for i in itertools.product(*known)]
        done = torch.zeros(bounds.shape[0], dtype=torch.bool)
        drops = torch.zeros(bounds.shape[0], dtype=torch.float64)
        later = scorer.total - len(todo)  # the refinement levels' windows

        def exact(chosen):
            """Score the ``chosen`` windows exactly; the scorer's total (progress) grows to cover them."""
            scorer.total = max(scorer.total, scorer.done + len(chosen) + later)
            drops[chosen] = drops_of(bounds, chosen)[chosen]

        first = [i for i in coarse if changed[i]]
        scorer.total = len(first) + int(drill * len(todo)) + later  # progress: a guess until the drill-down ends
        exact(first)
        done[coarse] = True
        guess = interpolated(drops[coarse].view(*[len(k) for k in known]), matrices).flatten()
        scale = float(drops[first].abs().max()) if first else 0.0
        scale = scale or 1.0  # the largest exact drop so far: what the tolerance is a share of
        ranked = torch.argsort(guess.abs(), descending=True)[:max(1, int(drill * len(guess)))].tolist()
        todo_next, worst, rounds = [i for i in ranked if not done[i]], 0.0, 0
        while todo_next:
            exact([i for i in todo_next if changed[i]])
            done[todo_next] = True
            missed = (drops[todo_next] - guess[todo_next]).abs() / scale
            worst = max(worst, float(missed.max()))
            rounds += 1
            near = {flat(j) for i, m in zip(todo_next, missed.tolist()) if m > tolerance
                    for j in _ring(unravel(i), lattice)}
            todo_next = sorted(i for i in near if not done[i])
        facts = {"coarse_steps": list(steps), "tolerance": tolerance, "drill": drill, "drill_rounds": rounds,
                 "largest_drill_error": round(worst, 4)}
        return _checked_guess(exact, drops, guess, done, changed, tolerance, facts)


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
