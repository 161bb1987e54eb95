"""The time a method will take, said before it runs: its passes times pass times measured on the case.

A method's cost is counted in passes (``Method.estimate``). What a pass costs differs by how it runs:
the perturbation methods score batches of copies under ``torch.inference_mode`` (per volume several
times cheaper than one autograd forward: 7 ms against 40 ms for the demo model on two CPU cores),
the batched gradient methods (SmoothGrad, integrated gradients) run forward and backward on batches,
and the others one volume at a time. Each kind a run needs is timed once, on a batch of two copies of
the case, so the estimate costs a few passes against the method's dozens to thousands.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import XAIError
from .case import PreparedCase
from .memory import free_memory
from .models import evaluation_mode, model_output, probabilities
from .targets import output_gradient

WARM_LIMIT_S = 1.0  # a first forward pass under this is timed again (its one-off start-up costs dominate)
BATCH = 2  # copies of the case in a timed batch
BACKWARD_FORWARDS = 2  # a single backward pass, in forward passes, where none was timed
GRADIENT_MEMORY = 2  # x the activations of a volume: they, and their gradients during the backward pass


@dataclass
class PassTimes:
    """Seconds per volume: a forward pass, an inference pass in a batch, a forward+backward pass in a batch."""

    forward: float
    inference: float | None = None
    gradient: float | None = None
    gradient_bytes: int | None = None  # per volume: the layers' outputs autograd keeps for the backward pass
    # through sliding windows (``forward``: all of them, blended): the share of the windows on the target, and
    # the windows' number and layout (how many a perturbed box runs again)
    window_share: float | None = None
    layout: object = None
    scan: tuple | None = None  # (padded voxels, input channels, output classes) of the scan the windows cover

    @classmethod
    def measure(cls, case: PreparedCase, methods, first_forward: float, costs: list[dict], target,
                reference: torch.Tensor) -> "PassTimes":
        """Time what ``methods`` (with their ``costs``) will run for ``target`` (resolved on ``reference``, the
        case's output); ``first_forward``: the case's first pass."""
        from ..methods.machinery.scoring import layer_output_sizes, timed

        forward = first_forward
        if forward < WARM_LIMIT_S:
            forward = min(forward, timed(case.output)[0])
        times = cls(forward)
        if case.model.inferer is not None:  # no pass on the whole scan at once: the windows' share of one
            layout, _, touched = case.model.windows.weights(case.x, output_gradient(target, reference), 0)
            times.window_share, times.layout = len(touched) / len(layout.slices), layout
            times.scan = (int(torch.tensor(layout.padded).prod()), case.x.shape[1], reference.shape[1])
            return times
        fixed = case.model.input_shape
        batch = 1 if fixed and fixed[0] == 1 else BATCH  # a program exported for one volume at a time
        network, x = case.model.network, case.x.expand(batch, *case.x.shape[1:]).contiguous()

        sizes: list[int] = []

        def gradient():
            with layer_output_sizes(network, case.model.has_layers) as kept, torch.enable_grad():
                inputs = x.clone().requires_grad_(True)
                out = model_output(network(inputs)).float()
                torch.autograd.grad(out.flatten(1)[:, 0].sum(), inputs)
            sizes.extend(kept)

        def perturbed():  # as the perturbation methods' scorer does: paste, pass, score as logit and probability
            copies = torch.where(x > x.mean(), x, 0.5 * x)
            out = model_output(network(copies)).float()
            rows = torch.zeros(batch, dtype=torch.long, device=x.device)
            target.score(out, reference, rows)
            target.score(probabilities(out, case.model.output_kind), reference, rows)

        try:
            with evaluation_mode(case.model):
                if any(m.family == "perturbation" for m in methods):
                    with torch.inference_mode():
                        times.inference = timed(perturbed)[0] / batch
                if any(_batched(m) and cost["backward"] > 1 for m, cost in zip(methods, costs)):
                    times.gradient = timed(gradient)[0] / batch
                    times.gradient_bytes = sum(sizes) // batch if sizes else None
        except RuntimeError:  # no batched timing (e.g. out of memory for two copies): single passes then
            pass
        return times

    def seconds(self, method, cost: dict, model, device: torch.device, params: dict | None = None) -> float:
        """The estimate for ``method`` running ``cost`` passes per volume of ``model`` on ``device`` (with
        ``params``: the size of occlusion's box, through sliding windows)."""
        forward, backward = int(cost["forward"]), int(cost["backward"])
        if self.window_share is not None:
            factor = 1.0 if method.family == "perturbation" else method.time_factor(model, device)  # no boxes
            return self._windowed(method, forward, backward, params or {}) * factor
        if method.family == "perturbation" and self.inference is not None:
            plain = forward * self.inference
        elif _batched(method) and backward > 1 and self.gradient is not None:  # batched forward+backward
            plain = backward * self.gradient + max(0, forward - backward) * self.forward
        else:
            plain = (forward + BACKWARD_FORWARDS * backward) * self.forward
        return plain * method.time_factor(model, device)


    def _windowed(self, method, forward: int, backward: int, params: dict) -> float:
        """Through sliding windows: every window for the prediction maps, the target's for the others, and for
        occlusion's boxes the windows each box lies in."""
        if method.family == "uncertainty":
            return forward * self.forward
        per_window = self.forward / len(self.layout.slices)
        if method.family == "perturbation" and "window" in method.defaults:
            box = params.get("window", method.defaults["window"])
            box = box if isinstance(box, (list, tuple)) else [box] * 3
            return forward * self.layout.windows_per_box(box) * per_window
        return (forward + BACKWARD_FORWARDS * backward) * self.window_share * self.forward


def check_memory(method, params: dict, times: PassTimes, device: torch.device) -> None:
    """Refuse, before it runs, a batched gradient method whose batches cannot fit in the free memory; through
    sliding windows, a method whose whole-scan buffers cannot."""
    if times.scan is not None:
        return _check_scan_memory(method, params, times, device)
    if not _batched(method) or method.family == "perturbation" or not times.gradient_bytes:
        return  # the perturbation methods size their batches to the memory themselves
    rows = params.get("samples", params.get("steps", 1))
    batch = min(int(params["batch_size"] or rows), int(rows))
    need, free = GRADIENT_MEMORY * batch * times.gradient_bytes, free_memory(torch.device(device))
    if need > free:
        fits = max(1, int(free // (GRADIENT_MEMORY * times.gradient_bytes)))
        raise XAIError(f"{method.name} in batches of {batch} needs about {need / 2**30:.1f} GB (the activations "
                       f"of {batch} copies and their gradients), and {free / 2**30:.1f} GB are free",
                       f"give {method.name}.batch_size={fits} or less")


def _check_scan_memory(method, params: dict, times: PassTimes, device: torch.device) -> None:
    """Through sliding windows a pass holds one window's graph, but the scan is held whole, in float32: the input,
    its padded copy and gradient buffer per copy in a batch, the output gradient, the blending sum and the
    output (per class)."""
    voxels, channels, classes = times.scan
    rows = params.get("samples", params.get("steps", 1)) if _batched(method) else 1
    batch = min(int(params.get("batch_size") or rows), int(rows))
    if method.family == "perturbation":
        batch = 2  # the scorer's copies (WINDOWED_BATCH), each with a whole output
    need = 4 * voxels * (channels * (2 * batch + 3) + classes * (3 + (batch if method.family == "perturbation"
                                                                       else 0)) + 1)
    free = free_memory(torch.device(device))
    if need > free:
        fix = f"give {method.name}.batch_size=1, or " if batch > 1 and "batch_size" in method.defaults else ""
        raise XAIError(f"{method.name} through sliding windows holds the whole scan ({voxels:,} voxels with the "
                       f"padding, {channels} channel(s), {classes} classes) several times: about "
                       f"{need / 2**30:.1f} GB, and {free / 2**30:.1f} GB are free",
                       f"{fix}crop the scan to the region of interest, or run on a machine with more memory")


def _batched(method) -> bool:
    """Runs its passes on batches of copies (SmoothGrad, integrated gradients, DeepSHAP)."""
    return "batch_size" in method.defaults
