"""A prepared case: one input moved into the model's space once, with everything that goes with it.

``prepare_case`` checks the input against the model, runs the model's preprocessing,
and puts the ROI, regions, reference volumes and reference-volume baselines into the
same model space. ``explain()``, the metrics, the benchmark and the Slicer module all
start from it; ``to_input_grid`` is the one way back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import SimpleITK as sitk
import numpy as np
import torch

from ..errors import XAIError
from .baselines import BASELINES
from .models import LoadedModel, check_input_shape, load_model
from .preprocess import PreprocessSpec, Preprocessor
from .targets import roi_component
from .volume import VOLUME_SUFFIXES, Volume, load_inputs, read_volume, resample_to


@dataclass
class PreparedCase:
    """An input on its own grid and in model space; nothing here is shared with the caller's data."""

    model: LoadedModel
    volume: Volume  # the input on its grid, channels stacked
    spec: PreprocessSpec
    preprocessor: Preprocessor
    x: torch.Tensor  # (1, C, X, Y, Z) in model space, on the model's device
    notes: list[str] = field(default_factory=list)
    regions: object = None  # a regions.Regions on the input grid, or None
    regions_model: torch.Tensor | None = None  # (X, Y, Z) integer labels in model space
    roi_model: torch.Tensor | None = None  # (X, Y, Z) bool in model space ("predicted": None here)
    roi_component: int | None = None  # "component:N": the N-th largest component of the predicted class
    references_model: torch.Tensor | None = None  # (R, C, X, Y, Z), for DeepSHAP

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def n_regions(self) -> int:
        return 0 if self.regions_model is None else int((torch.unique(self.regions_model) != 0).sum())

    def to_model(self, volume: Volume) -> torch.Tensor:
        """A volume on the input grid (or any grid: resampled linearly) as a model-space batch (1, C, X, Y, Z)."""
        return self.preprocessor.forward(self.on_grid(volume))[None].to(self.device)

    def mask_to_model(self, mask: Volume) -> torch.Tensor:
        """A mask (any grid; nearest neighbour) as a model-space (X, Y, Z) float map."""
        if not mask.same_grid(self.volume):
            mask = resample_to(mask, self.volume, interpolator=sitk.sitkNearestNeighbor)
        return self.preprocessor.forward_mask(mask)[0].to(self.device)

    def to_input_grid(self, model_space) -> np.ndarray:
        """A model-space map (C, X, Y, Z) back onto the input grid through the exact inverse transforms."""
        return self.preprocessor.inverse(model_space)

    def spacing_model(self) -> np.ndarray:
        """Voxel size in mm of the model grid."""
        return np.linalg.norm(self.preprocessor.model_affine()[:3, :3], axis=0)

    def output(self) -> torch.Tensor:
        """The model's output on the case (eval mode, no autograd)."""
        return self.model.output(self.x)

    def predict(self) -> dict:
        return self.model.predict(self.x)

    def predicted_labels(self) -> np.ndarray:
        """A segmentation model's predicted class per voxel of the input grid (I, J, K): the class scores brought
        back through the inverse transforms, then the largest (a single-logit model: above 0.5 is 1)."""
        from .models import probabilities

        output = self.output()
        if output.ndim < 3:
            raise XAIError("this model gives one score per class, not a segmentation",
                           "load the prediction of a segmentation model")
        back = self.to_input_grid(probabilities(output, self.model.output_kind)[0])
        labels = (back[0] > 0.5) if back.shape[0] == 1 else back.argmax(0)
        return labels.astype(np.int16)

    def on_grid(self, item) -> Volume:
        """A reference volume (path or Volume) with the input's channels, on the input's grid, finite."""
        ref, _ = load_inputs(item)
        if ref.n_channels != self.volume.n_channels:
            raise XAIError(f"a reference volume has {ref.n_channels} channel(s), the input {self.volume.n_channels}",
                           "give reference volumes with the input's channels")
        if not ref.same_grid(self.volume):
            ref = resample_to(ref, self.volume)
            self._note("a reference volume was resampled (linear) onto the input grid")
        bad = int((~np.isfinite(ref.array)).sum())
        if bad:
            where = f" '{item}'" if isinstance(item, (str, os.PathLike)) else ""
            raise XAIError(f"the reference volume{where} holds {bad} NaN or infinite voxels", "fill or mask them first")
        return ref

    def _note(self, note: str) -> None:
        if note not in self.notes:  # a case serves many runs: say each thing once
            self.notes.append(note)

    def baselines(self, params: dict) -> tuple[dict, dict]:
        """Method parameters to run with (reference-volume baselines in model space) and to record (their names)."""
        run, record = {}, {}
        for name, given in params.items():
            base = given.get("baseline")
            if isinstance(base, str) and base not in BASELINES and not base.lower().endswith(VOLUME_SUFFIXES):
                raise XAIError(f"unknown baseline '{base}'", f"use {', '.join(BASELINES)} or a reference volume file")
            if isinstance(base, Volume) or (isinstance(base, str) and base.lower().endswith(VOLUME_SUFFIXES)):
                run[name] = {**given, "baseline": self.to_model(base)}
                record[name] = {**given, "baseline": base if isinstance(base, str) else "reference volume"}
            else:
                run[name] = record[name] = given
        return run, record


def check_volume(volume: Volume, model: LoadedModel) -> None:
    """Refuse inputs no method can explain: non-finite voxels, a constant volume, the wrong channel count."""
    bad = int((~np.isfinite(volume.array)).sum())
    if bad:
        raise XAIError(f"the input volume ({', '.join(volume.channel_names)}) holds {bad} NaN or infinite voxels",
                       "fill or mask them before explaining")
    if float(volume.array.max()) == float(volume.array.min()):
        raise XAIError(f"the input volume is constant (every voxel is {float(volume.array.flat[0]):g})",
                       "check the file: a blank volume has nothing to explain")
    if model.in_channels is not None and model.in_channels != volume.n_channels:
        raise XAIError(f"the model expects {model.in_channels} input channel(s) but {volume.n_channels} were given",
                       f"pass {model.in_channels} volume(s) with --input, in the model's channel order")


def prepare_case(model, inputs, *, preprocessing: dict | None = None, roi=None, regions=None, region_names=None,
                 references=None, needs_regions: bool = False, device="auto") -> PreparedCase:
    """Check ``inputs`` against ``model`` and move them, and everything that goes with them, into model space.

    ``model``: a path, ``nn.Module`` or :class:`LoadedModel`; ``inputs``: a path or Volume, or a list of
    them (channels). ``preprocessing``: overrides of the model's orientation / spacing / spatial_size /
    intensity. ``roi``: a mask (path or Volume), "predicted" (resolved from the output later), or "component:N"
    (the N-th largest connected component of the predicted class, resolved likewise).
    ``regions``: "harvard-oxford", "supervoxels", a label volume (with ``region_names``) or a Regions;
    ``needs_regions``: use SLIC supervoxels when none are given. ``references``: reference volumes.
    """
    from ..regions import resolve_regions, supervoxel_regions  # scikit-image and the atlas only when asked for

    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    if isinstance(model, LoadedModel) and device not in (None, "auto"):
        loaded.to(device)
    volume, notes = load_inputs(inputs)
    check_volume(volume, loaded)
    spec = loaded.preprocessing.merged(**(preprocessing or {}))
    if loaded.inferer is not None and spec.spatial_size:
        raise XAIError(f"the model runs sliding windows over the whole scan, and its preprocessing also crops/pads "
                       f"the scan to {spec.spatial_size}", "drop the spatial size (--size), or the windows")
    pre = Preprocessor(spec)
    case = PreparedCase(loaded, volume, spec, pre, pre.forward(volume)[None].to(loaded.device), notes)
    # a program exported for a fixed size: through sliding windows it sees the windows, not the scan
    check_input_shape(loaded, case.x if loaded.inferer is None else
                      torch.empty((1, case.x.shape[1], *loaded.inferer.roi_size), device="meta"))
    if regions is not None:
        case.regions = resolve_regions(regions, region_names, volume)
    elif needs_regions:
        case.regions = supervoxel_regions(volume)
        notes.append("no regions were given: the region methods scored SLIC supervoxels of the volume")
    if case.regions is not None:
        case.regions_model = torch.round(pre.forward_mask(case.regions.labels)[0]).long().to(loaded.device)
    case.roi_component = roi_component(roi)  # checked before any pass
    if roi is not None and not (isinstance(roi, str) and (roi == "predicted" or case.roi_component)):
        roi_volume = roi if isinstance(roi, Volume) else read_volume(roi)
        if not roi_volume.same_grid(volume):
            notes.append("the ROI was resampled (nearest) onto the input grid")
        case.roi_model = case.mask_to_model(roi_volume) > 0.5
    if isinstance(references, (str, os.PathLike, Volume)):
        references = [references]
    if references:
        case.references_model = torch.cat([case.to_model(r) for r in references])
    return case
