"""One method on a batch already in model space: the model-space maps, what the method said, and its passes.

What every caller that recomputes maps shares (explain, the metrics, the trust card, the benchmark)."""
from __future__ import annotations

import torch

from ..errors import XAIError
from ..methods import Context, get_method
from .models import LoadedModel, evaluation_mode, load_model
from .targets import ClassTarget


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
    if method.needs_layers:
        loaded.with_layers(x)
    chosen = method.params(params)
    if loaded.inferer is not None and not method.through_windows:
        raise XAIError(f"{method.name} reads one pass over the whole input, and this model runs on sliding windows "
                       "(their maps would not add up to one)", "explain it without them (--no-window, or "
                       "inferer={}) at the network's input size")
    if reference is None:
        reference = loaded.output(x)
    if not hasattr(target, "score"):
        target = ClassTarget(target)
    resolved = target.resolve(reference, loaded.class_names)
    if regions is not None:
        regions = torch.as_tensor(regions, device=x.device)
    ctx = Context(loaded, x, resolved, reference, layer=layer, seed=seed, progress=progress, cancel=cancel,
                  references=None if references is None else references.to(x), regions=regions)
    torch.manual_seed(seed)
    computed = loaded.windows.computed if loaded.inferer is not None else 0
    with evaluation_mode(loaded):
        if loaded.inferer is not None and method.needs_layers:  # hooks see one window's pass at a time
            from ..methods.per_window import run_per_window
            maps, info = run_per_window(method, ctx, chosen)
        else:
            maps, info = method.run(ctx, **chosen)
    if loaded.inferer is not None:
        windows = loaded.windows
        info["sliding_window"] = {**windows.describe(x), **info.get("sliding_window", {}),
                                  "windows_computed": windows.computed - computed}
        if getattr(resolved, "linear", False) and "windows_on_target" not in info["sliding_window"]:
            info["sliding_window"]["windows_on_target"] = [
                len(windows.weights(x[n:n + 1], ctx.output_gradient(), n)[2]) for n in range(x.shape[0])]
        windows.release()  # what the run kept is not kept with the model
    return maps, info, ctx
