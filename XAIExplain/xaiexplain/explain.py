"""The engine's front door: volumes + model + target + methods -> attributions on the input grid."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk
import torch

from .errors import XAIError
from .methods import Context, get_method
from .models import LoadedModel, load_model, model_output
from .preprocess import Preprocessor
from .provenance import versions
from .regions import paint, region_table, resolve_regions, supervoxel_regions
from .result import Attribution
from .targets import ClassTarget, ContrastTarget, SegmentationTarget
from .volume import VOLUME_SUFFIXES, Volume, read_volume, resample_to, stack_channels


def load_inputs(inputs) -> tuple[Volume, list[str]]:
    """One Volume from a Volume, a path, or a list of them (as channels on the first one's grid)."""
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    volumes = [item if isinstance(item, Volume) else read_volume(item) for item in items]
    volume, notes = stack_channels(volumes)
    return volume, notes


def check_volume(volume: Volume, model: LoadedModel) -> None:
    bad = int((~np.isfinite(volume.array)).sum())
    if bad:
        raise XAIError(f"the input volume holds {bad} NaN or infinite voxels", "fill or mask them before explaining")
    if float(volume.array.max()) == float(volume.array.min()):
        raise XAIError(f"the input volume is constant (every voxel is {float(volume.array.flat[0]):g})",
                       "check the file: a blank volume has nothing to explain")
    if model.in_channels is not None and model.in_channels != volume.n_channels:
        raise XAIError(f"the model expects {model.in_channels} input channel(s) but {volume.n_channels} were given",
                       f"pass {model.in_channels} volume(s) with --input, in the model's channel order")


def _prediction(logits: torch.Tensor, class_names) -> dict:
    if logits.ndim == 2:
        probs = torch.softmax(logits.double(), 1)[0]
        k = int(probs.argmax())
        return {"task": "classification", "predicted_class": k,
                "predicted_name": class_names[k] if class_names else str(k),
                "probabilities": [round(float(p), 6) for p in probs], "logits": [float(v) for v in logits[0]],
                "class_names": class_names}
    labels = logits[0].argmax(0)
    counts = torch.bincount(labels.flatten(), minlength=logits.shape[1])
    return {"task": "segmentation", "voxels_per_class_model_space": [int(c) for c in counts],
            "class_names": class_names}


def _target(target, versus, roi_model_space, logits, class_names):
    if logits.ndim > 2:
        if target is None:
            raise XAIError("a segmentation model needs a target class", "give --target CLASS (index or name)")
        spec = SegmentationTarget(target, roi_model_space)
    elif roi_model_space is not None:
        raise XAIError("--roi needs a segmentation model; this model outputs one score per class",
                       "drop --roi for a classifier")
    elif versus is not None:
        spec = ContrastTarget(target if target is not None else int(logits.argmax(1)[0]), versus)
    else:
        spec = ClassTarget(target)
    return spec.resolve(logits, class_names)


def attribute(model, x: torch.Tensor, method, *, target=None, layer: str | None = None, params: dict | None = None,
              seed: int = 0, reference: torch.Tensor | None = None, references: torch.Tensor | None = None,
              progress=None, cancel=None, regions: torch.Tensor | None = None):
    """Model-space attributions for a batch ``x`` (N, C, X, Y, Z) already in model space.

    ``references``: reference volumes (R, C, X, Y, Z) in model space, for DeepSHAP.

    ``target``: a target object (ClassTarget, ContrastTarget, SegmentationTarget) or a class
    index/name (None: each sample's predicted class). ``regions``: integer labels (X, Y, Z)
    in model space for the region methods (0 = background). Returns ``(maps, info, context)``;
    ``context.passes`` counts forward and backward passes in volumes.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=None)
    method = get_method(method) if isinstance(method, str) else method
    chosen = method.params(params)
    if reference is None:
        with torch.inference_mode(), evaluation_mode(loaded):
            reference = model_output(loaded.network(x)).float().clone()
    if not hasattr(target, "score"):
        target = ClassTarget(target)
    resolved = target.resolve(reference, loaded.class_names)
    if regions is not None:
        regions = torch.as_tensor(regions, device=x.device)
    ctx = Context(loaded, x, resolved, reference, layer=layer, seed=seed, progress=progress, cancel=cancel,
                  references=None if references is None else references.to(x), regions=regions)
    torch.manual_seed(seed)
    with evaluation_mode(loaded):
        maps, info = method.run(ctx, **chosen)
    return maps, info, ctx


def _on_grid(item, volume: Volume, notes: list) -> Volume:
    """A reference volume (a baseline or one of DeepSHAP's references: path or Volume) on the input's grid."""
    ref, _ = load_inputs(item)
    if ref.n_channels != volume.n_channels:
        raise XAIError(f"a reference volume has {ref.n_channels} channel(s), the input {volume.n_channels}",
                       "give reference volumes with the input's channels")
    if not ref.same_grid(volume):
        ref = resample_to(ref, volume)
        notes.append("a reference volume was resampled (linear) onto the input grid")
    if not np.isfinite(ref.array).all():
        raise XAIError("a reference volume holds NaN or infinite voxels", "fill or mask them first")
    return ref


@contextmanager
def evaluation_mode(model: LoadedModel):
    """Run in eval mode (BatchNorm statistics frozen, dropout off); give the model back as it was."""
    modes = [(m, m.training) for m in model.network.modules()]  # per module: some may be frozen already
    model.network.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


BASELINES = ("zeros", "mean", "blur")


def _model_space_baselines(params: dict, volume: Volume, spec, device, notes: list) -> tuple[dict, dict]:
    """Parameters to run with (a reference-volume baseline moved into model space) and to record (its name)."""
    run, record = {}, {}
    for name, given in params.items():
        base = given.get("baseline")
        if isinstance(base, str) and base not in BASELINES and not base.lower().endswith(VOLUME_SUFFIXES):
            raise XAIError(f"unknown baseline '{base}'", f"use {', '.join(BASELINES)} or a reference volume file")
        if isinstance(base, Volume) or (isinstance(base, str) and base.lower().endswith(VOLUME_SUFFIXES)):
            moved = Preprocessor(spec).forward(_on_grid(base, volume, notes))[None].to(device)
            run[name] = {**given, "baseline": moved}
            record[name] = {**given, "baseline": base if isinstance(base, str) else "reference volume"}
        else:
            run[name] = record[name] = given
    return run, record


def explain(model, inputs, methods=("gradcam",), *, target=None, versus=None, roi=None, layer: str | None = None,
            params: dict | None = None, seed: int = 0, device="auto", preprocessing: dict | None = None,
            references=None, progress=None, cancel=None, regions=None, region_names=None) -> list[Attribution]:
    """Explain ``model``'s decision on ``inputs`` with each of ``methods``.

    ``model``: a path (TorchScript, .pt2, MONAI bundle folder), an ``nn.Module`` or a
    :class:`LoadedModel`. ``inputs``: a path or :class:`Volume`, or a list of them
    (channels). ``target``: class index or name (default: the predicted class);
    ``versus``: a second class for a contrast; ``roi``: a mask (path or Volume on
    the input grid) for segmentation models, or ``"predicted"``. ``params``:
    ``{method: {parameter: value}}``. ``preprocessing``: overrides of the model's
    orientation / spacing / spatial_size / intensity. ``regions``: "harvard-oxford" (registered
    into the volume), "supervoxels", a label volume (path or Volume, with ``region_names``: a
    names file or {label: name}) or a :class:`Regions`; every result then carries a region
    table, and region methods (occlusion-regions, LIME, KernelSHAP) score these regions
    (SLIC supervoxels when none are given). A method parameter ``baseline`` may be a
    reference volume (path or Volume on the input grid); ``references``: a set of them
    for DeepSHAP. Nothing given is modified.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    if isinstance(model, LoadedModel) and device not in (None, "auto"):
        loaded.to(device)
    volume, notes = load_inputs(inputs)
    check_volume(volume, loaded)
    chosen = [get_method(m) for m in ([methods] if isinstance(methods, str) else methods)]
    params = {get_method(k).name: v for k, v in (params or {}).items()}
    for method in chosen:
        if method.needs_layers and not loaded.has_layers:
            loaded.named_layers()  # raises the clear TorchScript message
        method.params(params.get(method.name))
    spec = loaded.preprocessing.merged(**(preprocessing or {}))
    pre = Preprocessor(spec)
    device_ = loaded.device
    x = pre.forward(volume)[None].to(device_)
    params, recorded_params = _model_space_baselines(params, volume, spec, device_, notes)
    region_set = None
    if regions is not None:
        region_set = resolve_regions(regions, region_names, volume, seed=seed)
    elif any(m.needs_regions for m in chosen):
        region_set = supervoxel_regions(volume)
        notes.append("no regions were given: the region methods scored SLIC supervoxels of the volume")
    regions_model, n_regions = None, 0
    if region_set is not None:
        regions_model = torch.round(pre.forward_mask(region_set.labels)[0]).long().to(device_)
        n_regions = int((torch.unique(regions_model) != 0).sum())
    roi_model = None
    if roi is not None and not (isinstance(roi, str) and roi == "predicted"):
        roi_volume = roi if isinstance(roi, Volume) else read_volume(roi)
        if not roi_volume.same_grid(volume):
            roi_volume = resample_to(roi_volume, volume, interpolator=sitk.sitkNearestNeighbor)
            notes.append("the ROI was resampled (nearest) onto the input grid")
        roi_model = (pre.forward_mask(roi_volume)[0] > 0.5).to(device_)
    refs_model = None
    if isinstance(references, (str, os.PathLike, Volume)):
        references = [references]
    if references:
        refs_model = torch.stack([pre.forward(_on_grid(r, volume, notes)) for r in references]).to(device_)

    with evaluation_mode(loaded):
        with torch.inference_mode():
            start = time.perf_counter()
            try:
                logits = model_output(loaded.network(x)).float()
            except RuntimeError as err:
                raise XAIError(f"the model failed on the input ({str(err).splitlines()[0][:160]})",
                               "check channels, size and preprocessing (--spacing/--size) against the model") from None
            forward_seconds = time.perf_counter() - start
        logits = logits.clone()
        if loaded.task is None:
            loaded.task = "segmentation" if logits.ndim > 2 else "classification"
        resolved = _target(target, versus, roi_model, logits, loaded.class_names)
        prediction = _prediction(logits, loaded.class_names)
        target_info = resolved.describe(logits, loaded.class_names)
        results = []
        for number, method in enumerate(chosen):
            if isinstance(resolved, SegmentationTarget) and not method.segmentation:
                raise XAIError(f"method '{method.name}' does not apply to segmentation targets",
                               "choose gradcam or a gradient method")
            chosen_params = method.params(params.get(method.name))
            cost = method.estimate(chosen_params, tuple(x.shape[2:]), n_regions)
            estimate = forward_seconds * (cost["forward"] + 2 * cost["backward"])

            def report(fraction, message, number=number):
                if progress is not None:
                    progress((number + fraction) / len(chosen), message)

            report(0.0, f"{method.name}: about {estimate:.1f} s ({cost['forward']} forward, {cost['backward']} backward passes)")
            start = time.perf_counter()
            maps, info, ctx = attribute(loaded, x, method, target=resolved, layer=layer, params=chosen_params,
                                        seed=seed, reference=logits, references=refs_model, progress=report,
                                        cancel=cancel, regions=regions_model)
            seconds = time.perf_counter() - start
            region_scores = info.pop("region_scores", None)
            region_columns = info.pop("region_columns", None)
            if region_scores is not None:  # region scores are painted on the input grid's own labels, exactly
                back = paint(region_set.labels.array[0], region_scores[0], fill=0.0)[None]
            else:
                back = pre.inverse(maps[0].float())
            total = back.sum(0, keepdims=True)
            table = None
            if region_set is not None:
                table = region_table(total[0], region_set, region_scores[0] if region_scores else None)
                for column, values in (region_columns[0] if region_columns else {}).items():
                    for row in table:
                        row[column] = values.get(row["id"], float("nan"))
                info["regions"] = region_set.describe()
            results.append(Attribution(
                map=volume.with_array(total, [method.name]), method=method.name,
                signed=method.signed, params={**chosen_params, **recorded_params.get(method.name, {})},
                target=target_info, prediction=prediction,
                timings={"seconds": round(seconds, 4), "estimated_seconds": round(estimate, 4),
                         "forward_seconds": round(forward_seconds, 4), **ctx.passes},
                versions=versions(), seed=seed, model={**loaded.describe(), "device": str(device_)},
                channel_maps=volume.with_array(back, list(volume.channel_names)) if back.shape[0] > 1 else None,
                info={**info, "preprocessing": spec.to_dict(), "channels": list(volume.channel_names)},
                notes=list(notes), regions=table,
                region_labels=region_set.labels if region_set is not None else None))
            report(1.0, f"{method.name}: done in {seconds:.2f} s")
    return results
