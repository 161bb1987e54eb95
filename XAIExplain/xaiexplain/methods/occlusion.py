"""Occlusion: replace a 3D window, or one anatomical region, by a baseline and measure the drop of the target."""
from __future__ import annotations

import itertools

import torch

from .base import Method, register
from .perturb import (Scorer, baseline_of, check_score, compose, describe_baseline, region_index,
                      region_scores_map)


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


class PatchOcclusion(Method):
    name, title, family = "occlusion", "Patch occlusion (3D sliding window)", "perturbation"
    needs_gradients = False
    defaults = {"window": 16, "stride": 8, "baseline": "blur", "score": "probability", "batch_size": None}
    reference = "Zeiler & Fergus 2014"

    def cost(self, params):
        return {"forward": 1, "backward": 0, "per": "window"}

    def estimate(self, params, shape, n_regions=0):
        return {"forward": len(windows(shape, params["window"], params["stride"])) + 1, "backward": 0}

    def run(self, ctx, window, stride, baseline, score, batch_size):
        check_score(score)
        base_all = baseline_of(ctx, baseline)
        spots = windows(ctx.x.shape[2:], window, stride)
        maps, info = [], {}
        for n in range(ctx.x.shape[0]):
            x, base = ctx.x[n:n + 1], base_all[n:n + 1]
            # A window where the baseline equals the input changes nothing: its drop is exactly 0, no pass needed.
            todo = [i for i, w in enumerate(spots)
                    if not torch.equal(x[(0, slice(None)) + w], base[(0, slice(None)) + w])]
            scorer = Scorer(ctx, n, len(todo), batch_size, "occlusion")
            drops = torch.zeros(len(spots), dtype=torch.float64)
            for part in scorer.slices():
                chosen = todo[part]
                batch = x.expand(len(chosen), *x.shape[1:]).clone()
                for b, i in enumerate(chosen):
                    batch[(b, slice(None)) + spots[i]] = base[(0, slice(None)) + spots[i]]
                logits, probs = scorer(batch)
                drops[chosen] = scorer.reference(score) - scorer.pick(logits, probs, score)
            total = torch.zeros(ctx.x.shape[2:], dtype=torch.float64)
            count = torch.zeros(ctx.x.shape[2:], dtype=torch.float64)
            for i, w in enumerate(spots):
                total[w] += drops[i]
                count[w] += 1
            maps.append((total / count).float()[None, None])
            info = {**scorer.facts, "windows": len(spots), "skipped_unchanged": len(spots) - len(todo),
                    "window": list(_triple(window)), "stride": list(_triple(stride)),
                    "baseline": describe_baseline(baseline), "score": score,
                    "map": f"mean drop of the target {score} over the windows covering each voxel"}
        return torch.cat(maps).to(ctx.x.device), info


class RegionOcclusion(Method):
    name, title, family = "occlusion-regions", "Region occlusion (one anatomical region at a time)", "perturbation"
    needs_gradients, needs_regions = False, True
    defaults = {"baseline": "blur", "score": "probability", "keep_only": False, "batch_size": None}
    reference = "Zeiler & Fergus 2014; Ribeiro et al. 2016 (feature ablation)"

    def cost(self, params):
        return {"forward": 2 if params["keep_only"] else 1, "backward": 0, "per": "region"}

    def estimate(self, params, shape, n_regions=0):
        return {"forward": n_regions * (2 if params["keep_only"] else 1) + 1 + int(params["keep_only"]), "backward": 0}

    def run(self, ctx, baseline, score, keep_only, batch_size):
        check_score(score)
        base_all = baseline_of(ctx, baseline)
        compact, ids = region_index(ctx)
        k = len(ids)
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
            for part in scorer.slices():
                logits[part], probs[part] = scorer(compose(x, base, compact, keep[part]))
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
