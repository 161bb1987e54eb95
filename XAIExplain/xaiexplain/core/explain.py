"""The engine's front door: volumes + model + target + methods -> attributions on the input grid (each method
through ``core.attribute``), with trust cards on request."""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import torch

from ..errors import XAIError
from ..methods import get_method
from .attribute import attribute
from .case import PreparedCase, prepare_case
from .models import LoadedModel, evaluation_mode, load_model, prediction
from .provenance import versions
from .result import Attribution
from .targets import ClassTarget, ContrastTarget, SegmentationTarget
from .timing import PassTimes, check_memory


def _target(target, versus, roi_model_space, logits, class_names, component=None):
    if logits.ndim > 2:
        if target is None:
            raise XAIError("a segmentation model needs a target class", "give --target CLASS (index or name)")
        spec = SegmentationTarget(target, roi_model_space, component=component)
    elif roi_model_space is not None or component:
        raise XAIError("--roi needs a segmentation model; this model outputs one score per class",
                       "drop --roi for a classifier")
    elif versus is not None:
        spec = ContrastTarget(target if target is not None else int(logits.argmax(1)[0]), versus)
    else:
        spec = ClassTarget(target)
    return spec.resolve(logits, class_names)


def explain(model, inputs, methods=("gradcam",), *, target=None, versus=None, roi=None, layer: str | None = None,
            params: dict | None = None, seed: int = 0, device="auto", preprocessing: dict | None = None,
            references=None, progress=None, cancel=None, regions=None, region_names=None,
            inferer: dict | None = None, checks=None, check_settings: dict | None = None) -> list[Attribution]:
    """Explain ``model``'s decision on ``inputs`` with each of ``methods``.

    ``model``: a path (TorchScript, .pt2, MONAI bundle folder), an ``nn.Module``, a
    :class:`LoadedModel`; ``inputs``: a path or :class:`Volume`, or a list of them
    (channels), or a :class:`PreparedCase` (then the case's own ROI, regions and references
    are used). ``target``: class index or name (default: the predicted class);
    ``versus``: a second class for a contrast; ``roi``: a mask (path or Volume on
    the input grid) for segmentation models, or ``"predicted"``. ``params``:
    ``{method: {parameter: value}}``. ``preprocessing``: overrides of the model's
    orientation / spacing / spatial_size / intensity. ``regions``: "harvard-oxford" (registered
    into the volume), "supervoxels", a label volume (path or Volume, with ``region_names``: a
    names file or {label: name}) or a :class:`Regions`; every result then carries a region
    table, and region methods (occlusion-regions, LIME, KernelSHAP) score these regions
    (SLIC supervoxels when none are given). A method parameter ``baseline`` may be a
    reference volume (path or Volume on the input grid); ``references``: a set of them
    for DeepSHAP. ``inferer``: sliding-window settings (``roi_size``, ``overlap``, ``mode``,
    ``sw_batch_size``; MONAI's names) overriding the model's own ({}: none): the network then runs on windows
    of the whole scan, as MONAI's ``SlidingWindowInferer``, and every map explains that blended output.
    ``checks``: True (all) or names from ``trust.CHECKS``: every result then carries its trust card
    (``Attribution.trust``), with ``check_settings`` ({check: {setting: value}}) over the checks' defaults.
    Nothing given is modified.
    """
    # a method named twice, or by its name and an alias, runs once (one map, one output file)
    chosen = list({m.name: m for m in (get_method(m) for m in ([methods] if isinstance(methods, str) else methods))
                   }.values())
    if not chosen:
        raise XAIError("no method was given", "choose at least one (see: xaiexplain methods)")
    params = {get_method(k).name: v for k, v in (params or {}).items()}
    idle = [name for name in params if name not in {m.name for m in chosen}]
    if idle:
        raise XAIError(f"parameters were given for {', '.join(idle)}, which is not among the chosen methods "
                       f"({', '.join(m.name for m in chosen)})", "choose that method too, or drop its parameters")
    check_seed(seed)
    card = None
    if checks:
        from ..trust import card_settings
        card = card_settings(None if checks is True else checks, check_settings)
    elif check_settings:
        raise XAIError("check settings were given without checks", "add --check (checks=True), or drop them")
    if isinstance(inputs, PreparedCase):
        case = inputs
        _check_case(case, model, chosen, preprocessing=preprocessing, roi=roi, regions=regions, inferer=inferer,
                    region_names=region_names, references=references)
        _check_methods(chosen, params)
    else:
        loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
        if inferer is not None:  # the caller's model keeps its own inferer
            loaded = load_model(dataclasses.replace(loaded), device=None, inferer=inferer)
        _check_methods(chosen, params)
        case = prepare_case(loaded, inputs, preprocessing=preprocessing, roi=roi, regions=regions,
                            region_names=region_names, references=references,
                            needs_regions=any(m.needs_regions for m in chosen), device=device)
    loaded = case.model
    if any(m.needs_layers for m in chosen):
        loaded.with_layers(case.x)  # a TorchScript network converted once, before any method runs
    params, recorded_params = case.baselines(params)
    start = time.perf_counter()
    logits = case.output()
    forward_seconds = time.perf_counter() - start
    if loaded.task is None:
        loaded.task = "segmentation" if logits.ndim > 2 else "classification"
    resolved = _target(target, versus, case.roi_model, logits, loaded.class_names, case.roi_component)
    predicted = prediction(logits, loaded.class_names, loaded.output_kind)
    target_info = resolved.describe(logits, loaded.class_names)
    for method in chosen:
        _check_applies(method, resolved, case.x.shape[1])
    all_params = [method.params(params.get(method.name)) for method in chosen]
    costs = [m.estimate(p, tuple(case.x.shape[2:]), case.n_regions) for m, p in zip(chosen, all_params)]
    times = PassTimes.measure(case, chosen, forward_seconds, costs, resolved, logits)
    for method, chosen_params in zip(chosen, all_params):
        check_memory(method, chosen_params, times, case.device)
    results, areas = [], None
    with evaluation_mode(loaded):
        for number, (method, chosen_params, cost) in enumerate(zip(chosen, all_params, costs)):
            estimate = times.seconds(method, cost, loaded, case.device, chosen_params)
            share = 0.5 if card else 1.0  # of the method's part of the progress: the map, then its checks

            def report(fraction, message, number=number, share=share):
                if progress is not None:
                    progress((number + share * fraction) / len(chosen), message)

            report(0.0, f"{method.name}: about {estimate:.1f} s ({cost['forward']} forward, {cost['backward']} backward passes)"
                   + (_card_cost_text(card, method, chosen_params, case) if card else ""))
            _peak_memory(case.device, reset=True)
            start = time.perf_counter()
            maps, info, ctx = attribute(loaded, case.x, method, target=resolved, layer=layer, params=chosen_params,
                                        seed=seed, reference=logits, references=case.references_model,
                                        progress=report, cancel=cancel, regions=case.regions_model)
            seconds = time.perf_counter() - start
            results.append(_on_input_grid(case, method, maps, info, Attribution(
                map=None, method=method.name, signed=method.signed,
                params={**chosen_params, **recorded_params.get(method.name, {})}, target=target_info,
                prediction=predicted,
                timings={"seconds": round(seconds, 4), "estimated_seconds": round(estimate, 4),
                         "forward_seconds": round(times.forward, 4), **ctx.passes,
                         **_peak_memory(case.device)},
                versions=versions(), seed=seed, model={**loaded.describe(), "device": str(case.device)})))
            if card:
                if areas is None and "shortcut" in card:  # the image's, once for every map of the run
                    from ..trust import suspect_areas
                    areas = suspect_areas(case.volume)
                _add_card(results[-1], case, method, chosen_params, resolved, maps, card, seed, areas,
                          lambda f, m, report=report: report(1.0 + f, m), cancel)
            report(1.0 / share, f"{method.name}: done in {seconds:.2f} s")
    return results


def _card_cost_text(card: dict, method, params: dict, case: PreparedCase) -> str:
    from ..trust import card_cost

    cost = card_cost(card, method, params, case.model, tuple(case.x.shape[2:]), case.n_regions)
    return (f"; its checks {sum(c['forward'] for c in cost.values())} forward, "
            f"{sum(c['backward'] for c in cost.values())} backward passes")


def _add_card(result: Attribution, case: PreparedCase, method, params, target, maps, card, seed, areas, progress,
              cancel) -> None:
    """The trust card of a result made here (its map in model space at hand), and the shortcut check's region."""
    from ..trust import trust_card

    result.trust = trust_card(case, method, params, target, maps, result, chosen=card, seed=seed, progress=progress,
                              cancel=cancel, areas=areas)
    for entry in result.trust["checks"]:
        region = entry.pop("region", None)
        if region is not None and region.any():
            result.shortcut_region = case.volume.with_array(region[None], ["shortcut"])


def _peak_memory(device: torch.device, reset: bool = False) -> dict:
    """The peak memory of a method's run: a GPU's peak allocation (reset when the run starts), or the process's
    peak resident memory on a CPU (the highest so far: it covers the run, and anything before it)."""
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                "peak_memory": "GPU allocation during the run"}
    try:
        import resource
    except ImportError:  # not on Windows
        return {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes
    return {"peak_memory_mb": round(peak / 2**20, 1),
            "peak_memory": "process peak resident memory so far"}


def _check_applies(method, target, channels: int) -> None:
    """Before any pass: the method can explain this kind of model and target."""
    segmentation = isinstance(target, SegmentationTarget)
    if segmentation and not method.segmentation:
        raise XAIError(f"method '{method.name}' does not apply to segmentation targets",
                       "choose gradcam or a gradient method")
    if not segmentation and not method.classification:
        raise XAIError(f"method '{method.name}' maps a segmentation network's voxelwise output; this model gives "
                       "one score per class", "choose it for a segmentation model")
    if channels < method.min_channels:
        raise XAIError(f"method '{method.name}' needs {method.min_channels} or more input channels; the model takes "
                       f"{channels}", "use it with a multi-channel model (one --input per sequence)")


def check_seed(seed) -> int:
    """A seed numpy and torch both take: a whole number from 0 to 2**32 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise XAIError(f"seed {seed!r} is not a whole number from 0 to 2**32 - 1", "give such a seed, e.g. 0")
    return seed


def _check_methods(chosen, params: dict) -> None:
    """Before any computation: known parameters (layer methods on TorchScript convert it, or refuse, later)."""
    for method in chosen:
        method.params(params.get(method.name))


def _check_case(case: PreparedCase, model, chosen, **given) -> None:
    """A prepared case carries its model, ROI, regions and references: refuse a second, different set."""
    if model is not None and model is not case.model:
        raise XAIError("a prepared case was given with another model", "pass model=None, or prepare a case for it")
    named = [name for name, value in given.items() if value is not None]
    if named:
        raise XAIError(f"{', '.join(named)} cannot change a prepared case",
                       "give them to prepare_case, which moves them into model space once")
    if case.regions_model is None and any(m.needs_regions for m in chosen):
        raise XAIError("the region methods need regions, and the prepared case has none",
                       "prepare the case with regions=..., or with needs_regions=True for supervoxels")


def _on_input_grid(case: PreparedCase, method, maps, info: dict, result: Attribution) -> Attribution:
    """Fill ``result`` with the model-space ``maps`` brought back onto the input grid, and the region table."""
    from ..regions import paint, region_table

    region_scores = info.pop("region_scores", None)
    region_columns = info.pop("region_columns", None)
    if region_scores is not None:  # region scores are painted on the input grid's own labels, exactly
        back = paint(case.regions.labels.array[0], region_scores[0], fill=0.0)[None]
    else:
        back = case.to_input_grid(maps[0].float())
    total = back.sum(0, keepdims=True)
    volume = case.volume
    if case.regions is not None:
        table = region_table(total[0], case.regions, region_scores[0] if region_scores else None)
        for column, values in (region_columns[0] if region_columns else {}).items():
            for row in table:
                row[column] = values.get(row["id"], float("nan"))
        info["regions"] = case.regions.describe()
        if case.regions.info.get("warning"):  # e.g. a poor atlas registration: said wherever the table is shown
            info["warnings"] = [*info.get("warnings", []), {
                "method": method.name, "code": "poor-registration", "message": case.regions.info["warning"],
                "fix": "look at the regions over the image (regions.nrrd) before trusting their names, or give "
                       "your own --regions"}]
        result.regions, result.region_labels = table, case.regions.labels
    result.map = volume.with_array(total, [method.name])
    result.channel_maps = volume.with_array(back, list(volume.channel_names)) if back.shape[0] > 1 else None
    if result.channel_maps is not None:  # which input channel (sequence) the map's mass lies on
        magnitude = np.abs(back).reshape(back.shape[0], -1).sum(1)
        total_magnitude = max(float(magnitude.sum()), 1e-30)
        info["channel_shares"] = [{"channel": name, "sum": float(back[c].sum()),
                                   "abs_share": float(magnitude[c]) / total_magnitude}
                                  for c, name in enumerate(volume.channel_names)]
    result.info = {**info, "preprocessing": case.spec.to_dict(), "channels": list(volume.channel_names)}
    result.notes = list(case.notes)
    return result
