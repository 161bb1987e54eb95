"""What scalar to explain: a class, a contrast between two classes, or a class inside a region."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import XAIError


def _check_class(index: int, n_classes: int, what: str = "class") -> int:
    if not 0 <= index < n_classes:
        raise XAIError(f"{what} {index} is out of range: the model has {n_classes} classes (0..{n_classes - 1})",
                       "choose a class index in that range")
    return index


def class_index(value, class_names: list[str] | None, n_classes: int) -> int:
    """A class given as an index or a name, checked against the model's classes."""
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        if not class_names or value not in class_names:
            raise XAIError(f"unknown class '{value}'", f"use an index or one of {class_names or 'the class indices'}")
        return class_names.index(value)
    return _check_class(int(value), n_classes)


@dataclass
class ClassTarget:
    """The logit of one class (None: the predicted class, resolved per sample)."""

    index: int | None = None

    def resolve(self, output: torch.Tensor, class_names=None) -> "ClassTarget":
        if self.index is None:
            return self
        return ClassTarget(class_index(self.index, class_names, output.shape[1]))

    def score(self, output: torch.Tensor, reference: torch.Tensor, rows=None) -> torch.Tensor:
        """The target's score per row of ``output``; ``rows`` maps each row to its sample of ``reference``."""
        index = self.indices(reference if rows is None else reference[rows])
        return output.gather(1, index[:, None])[:, 0]

    def indices(self, reference: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return reference.argmax(1)
        return torch.full((reference.shape[0],), self.index, dtype=torch.long, device=reference.device)

    def describe(self, reference: torch.Tensor, class_names=None) -> dict:
        idx = int(self.indices(reference)[0])
        return {"kind": "class", "class": idx, "name": class_names[idx] if class_names else str(idx),
                "chosen": "predicted" if self.index is None else "given"}


@dataclass
class ContrastTarget:
    """Logit of ``positive`` minus logit of ``negative``: why this class rather than that one."""

    positive: int | str
    negative: int | str

    def resolve(self, output, class_names=None) -> "ContrastTarget":
        a = class_index(self.positive, class_names, output.shape[1])
        b = class_index(self.negative, class_names, output.shape[1])
        if a == b:
            raise XAIError("a contrast needs two different classes", "give two different classes")
        return ContrastTarget(a, b)

    def score(self, output, reference, rows=None):
        return output[:, self.positive] - output[:, self.negative]

    def describe(self, reference, class_names=None) -> dict:
        names = class_names or [str(i) for i in range(reference.shape[1])]
        return {"kind": "contrast", "class": self.positive, "versus": self.negative,
                "name": f"{names[self.positive]} vs {names[self.negative]}"}


COMPONENT = "component:"


def is_roi_keyword(roi) -> bool:
    """'predicted' or 'component:N' (resolved from the model's own output), not a mask file."""
    return roi == "predicted" or bool(roi_component(roi))


def roi_component(roi) -> int | None:
    """N for ``roi`` = 'component:N' (the N-th largest connected component of the predicted class), else None."""
    if not (isinstance(roi, str) and roi.startswith(COMPONENT)):
        return None
    text = roi[len(COMPONENT):]
    if not text.isdigit() or int(text) < 1:
        raise XAIError(f"--roi {roi}: the component is not a whole number of 1 or more",
                       "give component:1 for the largest connected component of the predicted class, "
                       "component:2 for the next")
    return int(text)


def _component(mask: torch.Tensor, rank: int, name: str) -> tuple[torch.Tensor, int]:
    """The ``rank``-th largest 26-connected component of ``mask`` (X, Y, Z), and how many there are."""
    from scipy import ndimage

    labels, count = ndimage.label(mask.cpu().numpy(), structure=np.ones((3, 3, 3)))
    if rank > count:
        raise XAIError(f"the predicted {name} has {count} connected component{'s' * (count != 1)}, so no "
                       f"component {rank}", f"give --roi component:1 to component:{count}" if count
                       else "choose a class the model predicts somewhere")
    sizes = np.bincount(labels.ravel())[1:]
    chosen = int(np.argsort(-sizes, kind="stable")[rank - 1]) + 1  # ties: the first found
    return torch.from_numpy(labels == chosen).to(mask.device), count


@dataclass
class SegmentationTarget:
    """Mean logit of ``index`` over a region: a mask in model space, the model's own predicted mask, or one
    connected component of it (``component``: 1 the largest)."""

    linear = True  # the score is linear in the output (what sliding windows need to explain it window by window)
    index: int | str
    region: torch.Tensor | None = None  # (X, Y, Z) or (N, X, Y, Z); None -> predicted mask
    predicted: torch.Tensor | None = None  # the predicted mask (N, X, Y, Z), made once from the output resolved
    component: int | None = None
    components: list[int] | None = None  # per sample: how many components the prediction had

    def resolve(self, output, class_names=None) -> "SegmentationTarget":
        if output.ndim < 3:
            raise XAIError("a region target needs a segmentation model (voxelwise output)",
                           "drop --roi, or use a segmentation network")
        index = class_index(self.index, class_names, output.shape[1])
        # once, not per scored batch: an argmax over a batch of 128^3 outputs took 1.3 s, more than the pass
        predicted = (output.argmax(1) == index) if self.region is None else None
        components = None
        if self.component and predicted is not None:
            name = class_names[index] if class_names else f"class {index}"
            picked = [_component(sample, self.component, name) for sample in predicted]
            predicted, components = torch.stack([m for m, _ in picked]), [c for _, c in picked]
        predicted = predicted.float() if predicted is not None else None
        return SegmentationTarget(index, self.region, predicted, self.component, components)

    def _mask(self, reference: torch.Tensor, rows=None) -> torch.Tensor:
        if rows is not None and bool((rows == rows[0]).all()):
            rows = rows[:1]  # every row perturbs one sample (the perturbation methods): one mask, broadcast
        if self.region is None and self.predicted is not None:
            mask = self.predicted if rows is None else self.predicted[rows.to(self.predicted.device)]
        elif self.region is None:
            mask = ((reference if rows is None else reference[rows]).argmax(1) == self.index).float()
        else:
            mask = self.region.to(reference.device).float()
            mask = mask[None] if mask.ndim == 3 else mask if rows is None else mask[rows.to(mask.device)]
        if tuple(mask.shape[1:]) != tuple(reference.shape[2:]):
            raise XAIError(f"the region ({tuple(mask.shape[1:])}) does not match the model output grid "
                           f"({tuple(reference.shape[2:])})", "give a mask on the input volume's grid")
        if (mask.flatten(1).sum(1) == 0).any():
            raise XAIError("the region is empty in model space (no voxel of the mask, or no predicted voxel of the "
                           "class)", "give a mask that overlaps the volume, or another class")
        return mask

    def score(self, output, reference, rows=None):
        mask = self._mask(reference, rows).flatten(1)
        values = output[:, self.index].flatten(1)
        if mask.shape[0] == 1 and values.shape[0] != 1:  # one mask for every row: a product, no copies
            return (values @ mask[0]) / mask[0].sum()
        return (values * mask).sum(1) / mask.sum(1)

    def describe(self, reference, class_names=None) -> dict:
        mask = self._mask(reference)
        return {"kind": "segmentation", "class": self.index,
                "name": class_names[self.index] if class_names else str(self.index),
                "region": "given mask" if self.region is not None else "predicted mask" if not self.component
                else f"connected component {self.component} (by size, 26-connected) of the predicted mask, "
                     f"of {self.components[0]}",
                "region_voxels_model_space": int(mask[0].sum())}


def output_gradient(target, reference: torch.Tensor) -> torch.Tensor:
    """d score / d output (N, K, X, Y, Z) of a target linear in the output (the same at every output); what
    sliding windows weigh each window's output by, and what decides which windows a map needs."""
    if not getattr(target, "linear", False):
        raise XAIError("sliding windows explain a score that is linear in the network's output (a class over a "
                       "region); this target is not", "give a segmentation target (--target, --roi)")
    with torch.inference_mode(False), torch.enable_grad():  # asked for from inside scoring loops, too
        out = reference.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(target.score(out, reference).sum(), out)
    return grad
