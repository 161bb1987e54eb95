"""MONAI bundles: write the demo models as bundles, read any bundle's network, weights and metadata.

A bundle's ``configs/inference.json`` is parsed by ``monai.bundle.ConfigParser``,
which instantiates the classes it names: a bundle runs code, so load only
bundles you trust. Weights are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import monai
import numpy as np
import torch

from ..errors import XAIError
from .preprocess import PreprocessSpec

# Loading / typing steps that change nothing a map depends on (the spatial and intensity ones are parsed).
_HARMLESS_TRANSFORMS = ("LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "EnsureType", "LoadImage",
                        "EnsureChannelFirst", "CastToTyped", "ToTensord")


def write_bundle(folder, model: torch.nn.Module, network_target: str, network_args: dict, *, name: str,
                 description: str, class_names: list[str], in_channels: int, preprocessing: dict,
                 extra: dict | None = None, task: str = "classification", inferer: dict | None = None) -> Path:
    """Write ``model`` as a MONAI bundle whose preprocessing MONAI itself can also run; ``inferer``: the
    settings of a ``SlidingWindowInferer`` for a segmentation network."""
    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "models" / "model.pt")
    spec = PreprocessSpec.from_dict(preprocessing)
    transforms = [{"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"}]
    if spec.orientation:
        transforms.append({"_target_": "Orientationd", "keys": "image", "axcodes": spec.orientation})
    if spec.spacing:
        transforms.append({"_target_": "Spacingd", "keys": "image", "pixdim": spec.spacing, "mode": "bilinear"})
    intensity = spec.intensity or {}
    if intensity.get("kind") == "percentiles":
        transforms.append({"_target_": "ScaleIntensityRangePercentilesd", "keys": "image",
                           "lower": intensity["lower"], "upper": intensity["upper"], "b_min": intensity["b_min"],
                           "b_max": intensity["b_max"], "clip": intensity.get("clip", False), "channel_wise": True})
    if spec.spatial_size:
        transforms.append({"_target_": "ResizeWithPadOrCropd", "keys": "image", "spatial_size": spec.spatial_size})
    inference = {
        "imports": ["$import xaiexplain"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": network_target, **network_args},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
    }
    if inferer:
        inference["inferer"] = {"_target_": "SlidingWindowInferer", **inferer}
    classes = {str(i): n for i, n in enumerate(class_names)}
    metadata = {
        "version": "1.0.0", "name": name, "description": description, "task": task,
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__, "required_packages_version": {},
        "authors": "XAIExplain", "license": "Apache-2.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR",
                                 "num_channels": in_channels, "spatial_shape": spec.spatial_size,
                                 "dtype": "float32", "value_range": [], "is_patch_data": False,
                                 "channel_def": {"0": "T1"}}},
            "outputs": {"pred": {"type": "logits", "format": "segmentation" if task == "segmentation" else "classes",
                                 "num_channels": len(class_names),
                                 "spatial_shape": [-1, -1, -1] if task == "segmentation" else [len(class_names)],
                                 "dtype": "float32", "value_range": [],
                                 "is_patch_data": False, "channel_def": classes}},
        },
        "xaiexplain": {"preprocessing": spec.to_dict(), **(extra or {})},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n", encoding="utf-8")
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return folder


def _spec_from_monai_transforms(config: dict) -> tuple[PreprocessSpec, list[str]]:
    """Read orientation/spacing/intensity/size from a bundle's MONAI preprocessing list."""
    pre = config.get("preprocessing", {})
    items = pre.get("transforms", []) if isinstance(pre, dict) else []
    spec, ignored = PreprocessSpec(), []
    for item in items:
        target = str(item.get("_target_", "")).split(".")[-1] if isinstance(item, dict) else ""
        if target == "Orientationd":
            spec.orientation = item.get("axcodes")
        elif target == "Spacingd":
            spec.spacing = list(item["pixdim"])
        elif target == "ScaleIntensityRanged":
            spec.intensity = {"kind": "range", **{k: item[k] for k in ("a_min", "a_max", "b_min", "b_max") if k in item},
                              "clip": bool(item.get("clip", False))}
        elif target == "ScaleIntensityRangePercentilesd":
            spec.intensity = {"kind": "percentiles", **{k: item[k] for k in ("lower", "upper", "b_min", "b_max")},
                              "clip": bool(item.get("clip", False))}
        elif target == "NormalizeIntensityd":
            spec.intensity = {"kind": "zscore", "nonzero": bool(item.get("nonzero", False))}
        elif target == "ResizeWithPadOrCropd":
            spec.spatial_size = list(item["spatial_size"])
        elif target and target not in _HARMLESS_TRANSFORMS:
            ignored.append(target)
    return spec, ignored


def _inferer(parser, config: dict) -> dict | None:
    """The settings of the bundle's sliding-window inferer (``inferer`` in its config), None for a simple one."""
    item = config.get("inferer")
    if not isinstance(item, dict):
        return None
    from .windows import SLIDING, WindowSpec

    target = str(item.get("_target_", "")).split(".")[-1]
    if target not in SLIDING:  # said when the windows are used: --no-window still loads the bundle
        if target in ("SimpleInferer", ""):
            return None
        return {"_error": [f"the bundle's inferer {target} is not one XAIExplain can run window by window",
                           "give the windows yourself (--window X Y Z, --overlap, --blend), or --no-window"]}

    settings = {}
    for key in WindowSpec.__dataclass_fields__:
        if key in item:
            try:
                settings[key] = parser.get_parsed_content(f"inferer#{key}")
            except Exception as err:  # an expression or reference the bundle cannot resolve
                return {"_error": [f"cannot read the bundle's inferer {key} ({type(err).__name__})",
                                   "give the windows yourself (--window X Y Z), or --no-window"]}
    if isinstance(settings.get("roi_size"), tuple):
        settings["roi_size"] = list(settings["roi_size"])
    return settings


def read_bundle(folder) -> dict:
    """Network (weights loaded), metadata and preprocessing of a MONAI bundle folder."""
    from monai.bundle import ConfigParser

    folder = Path(folder)
    meta_file, config_file = folder / "configs" / "metadata.json", folder / "configs" / "inference.json"
    if not meta_file.exists() or not config_file.exists():
        raise XAIError(f"'{folder}' is not a MONAI bundle (configs/metadata.json and configs/inference.json missing)",
                       "point to the bundle's root folder")
    try:
        metadata = json.loads(meta_file.read_text(encoding="utf-8"))
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise XAIError(f"bundle config in '{folder}' is not valid JSON ({err.msg}, line {err.lineno})",
                       "repair or re-download the bundle") from None
    weights = folder / "models" / "model.pt"
    if not weights.exists():
        raise XAIError(f"bundle '{folder}' has no models/model.pt", "put the trained weights there")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.read_meta(str(meta_file))
    parser["bundle_root"] = str(folder)
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:  # a bundle can raise anything while instantiating
        raise XAIError(f"cannot build the network of bundle '{folder}' ({type(err).__name__}: {str(err).splitlines()[0][:120]})",
                       "install the packages the bundle names in its metadata") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:
        raise XAIError(f"cannot read weights '{weights}' ({type(err).__name__})",
                       "the file is corrupt or not a state dict; re-export it with torch.save(model.state_dict())") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise XAIError(f"weights in '{weights}' do not fit the bundle's network ({str(err).splitlines()[0][:120]})",
                       "use the weights trained for this network_def") from None
    own = metadata.get("xaiexplain", {}).get("preprocessing")
    if own is not None:
        spec, ignored = PreprocessSpec.from_dict(own), []
    else:
        spec, ignored = _spec_from_monai_transforms(config)
    fmt = metadata.get("network_data_format", {})
    image = fmt.get("inputs", {}).get("image", {})
    pred = fmt.get("outputs", {}).get("pred", {})
    channel_def = pred.get("channel_def") or {}
    class_names = [channel_def[k] for k in sorted(channel_def, key=int)] if channel_def else None
    out_shape = pred.get("spatial_shape") or []
    task = "segmentation" if len(out_shape) >= 3 or pred.get("format") == "segmentation" else "classification"
    inferer = _inferer(parser, config)
    return {"network": network.eval(), "metadata": metadata, "preprocessing": spec, "ignored_transforms": ignored,
            "inferer": inferer,
            "in_channels": image.get("num_channels"), "class_names": class_names, "task": task,
            "output": pred.get("type")}  # MONAI's "logits" or "probabilities", checked by load_model
