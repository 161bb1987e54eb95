"""Load models from every supported format behind one :class:`LoadedModel`.

Formats: a ``torch.nn.Module`` from Python; a MONAI bundle folder; a
``torch.export`` program (``.pt2``, run through ``torch.export.unflatten`` so
its layers stay reachable by name); a TorchScript file (its layers are hidden
from hooks, so layer methods refuse it). A ``<model>.json`` file beside a
TorchScript or ``.pt2`` file may give ``class_names``, ``in_channels``,
``task`` and ``preprocessing``.
"""
from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import XAIError
from .preprocess import PreprocessSpec

FORMATS = ("module", "bundle", "export", "torchscript")


@dataclass
class LoadedModel:
    network: nn.Module  # what the methods call; hookable unless format == "torchscript"
    format: str
    class_names: list[str] | None = None
    in_channels: int | None = None
    task: str | None = None  # "classification" | "segmentation" | None (read from the output)
    preprocessing: PreprocessSpec = field(default_factory=PreprocessSpec)
    source: str = "python object"
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_layers(self) -> bool:
        return self.format != "torchscript"

    @property
    def device(self) -> torch.device:
        for p in self.network.parameters():
            return p.device
        for b in self.network.buffers():
            return b.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> "LoadedModel":
        self.network.to(resolve_device(device))
        return self

    def describe(self) -> dict:
        return {"source": self.source, "format": self.format, "sha256": self.sha256, "task": self.task,
                "class_names": self.class_names, "in_channels": self.in_channels,
                "preprocessing": self.preprocessing.to_dict(), "notes": list(self.notes)}

    def named_layers(self) -> dict[str, nn.Module]:
        if not self.has_layers:
            raise XAIError("this method needs the model's layers, which a TorchScript file hides",
                           "give the model as a MONAI bundle, a torch.export .pt2 file or a torch.nn.Module")
        return dict(self.network.named_modules())

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output (float, detached) for a model-space batch, in eval mode without autograd."""
        with torch.inference_mode(), evaluation_mode(self):
            try:
                out = model_output(self.network(x.to(self.device))).float()
            except RuntimeError as err:
                raise XAIError(f"the model failed on the input ({str(err).splitlines()[0][:160]})",
                               "check channels, size and preprocessing (--spacing/--size) against the model") from None
        return out.clone()  # a normal tensor: inference tensors cannot enter autograd later

    def predict(self, x: torch.Tensor) -> dict:
        """What the model says about a model-space volume (1, C, X, Y, Z): see :func:`prediction`."""
        return prediction(self.output(x), self.class_names)


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


def prediction(logits: torch.Tensor, class_names) -> dict:
    """A classifier's predicted class and probabilities, or a segmentation's voxels per class (sample 0)."""
    if logits.ndim == 2:
        probs = probabilities(logits.double())[0]
        if probs.numel() == 1:  # a single logit: the probability of class 1
            probs = torch.cat([1 - probs, probs])
        k = int(probs.argmax())
        return {"task": "classification", "predicted_class": k,
                "predicted_name": class_names[k] if class_names else str(k),
                "probabilities": [round(float(p), 6) for p in probs], "logits": [float(v) for v in logits[0]],
                "class_names": class_names}
    labels = logits[0].argmax(0)
    counts = torch.bincount(labels.flatten(), minlength=logits.shape[1])
    return {"task": "segmentation", "voxels_per_class_model_space": [int(c) for c in counts],
            "class_names": class_names}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise XAIError("a GPU was requested but PyTorch sees none", "use --device cpu or auto")
    return device


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def _first_conv_channels(network: nn.Module) -> int | None:
    for module in network.modules():
        if isinstance(module, (nn.Conv3d, nn.Conv2d, nn.Conv1d)):
            return module.in_channels
    return None


def _sidecar(path: Path) -> dict:
    side = path.with_suffix(".json")
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise XAIError(f"model metadata '{side}' is not valid JSON ({err.msg})", "fix or remove the file") from None


def _load_file(path: Path) -> tuple[nn.Module, str, list[str]]:
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as err:
            raise XAIError(f"cannot read torch.export program '{path}' ({type(err).__name__})",
                           "re-export it with torch.export.save") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.unflatten(program), "export", []
    if not zipfile.is_zipfile(path):
        raise XAIError(f"'{path}' is not a TorchScript, .pt2 or bundle model (not a PyTorch archive)",
                       "check the file is complete and in one of these formats")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu"), "torchscript", [
                "TorchScript hides layers from hooks: CAM, guided backprop and DeconvNet are not available"]
    except RuntimeError:
        pass
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise XAIError(f"cannot read model '{path}' ({type(err).__name__})",
                       "the file is corrupt or not a TorchScript/.pt2 model") from None
    raise XAIError(f"'{path}' holds weights only, not a network",
                   "give a TorchScript file, a .pt2 program or a MONAI bundle, or pass the nn.Module from Python")


def load_model(source, *, class_names: list[str] | None = None, in_channels: int | None = None,
               task: str | None = None, preprocessing: dict | PreprocessSpec | None = None,
               device: str | torch.device | None = "auto") -> LoadedModel:
    """Load ``source`` (path or ``nn.Module``); arguments given here override the model's own metadata."""
    notes: list[str] = []
    meta: dict = {}
    if isinstance(source, LoadedModel):
        model = source
    else:
        if isinstance(source, nn.Module):
            fmt = "torchscript" if isinstance(source, torch.jit.ScriptModule) else "module"  # its layers are hidden
            network, where, digest = source, "python object", None
        else:
            path = Path(source)
            if not path.exists():
                raise XAIError(f"model '{path}' does not exist", "check the path (a file or a MONAI bundle folder)")
            digest = _sha256(path)
            where = str(path)
            if path.is_dir():
                from .bundle import read_bundle
                info = read_bundle(path)
                network, fmt = info["network"], "bundle"
                meta = {"class_names": info["class_names"], "in_channels": info["in_channels"],
                        "task": info["task"], "preprocessing": info["preprocessing"]}
                notes.append("a MONAI bundle runs the code its config names; load only bundles you trust")
                if info["ignored_transforms"]:
                    notes.append(f"bundle preprocessing steps not reproduced: {', '.join(info['ignored_transforms'])}")
            else:
                network, fmt, extra = _load_file(path)
                notes += extra
                meta = _sidecar(path)
        model = LoadedModel(network, fmt, meta.get("class_names"), meta.get("in_channels"), meta.get("task"),
                            meta.get("preprocessing") if isinstance(meta.get("preprocessing"), PreprocessSpec)
                            else PreprocessSpec.from_dict(meta.get("preprocessing")), where, digest, notes)
        if model.in_channels is None and model.has_layers:
            model.in_channels = _first_conv_channels(network)
    if class_names is not None:
        model.class_names = list(class_names)
    if in_channels is not None:
        model.in_channels = int(in_channels)
    if task is not None:
        model.task = task
    if preprocessing is not None:
        model.preprocessing = (preprocessing if isinstance(preprocessing, PreprocessSpec)
                               else PreprocessSpec.from_dict(preprocessing))
    if device is not None:
        model.to(device)
    return model


def model_output(output) -> torch.Tensor:
    """The prediction tensor of a forward pass (first element of a tuple/list output)."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise XAIError(f"the model returned {type(output).__name__}, not a tensor",
                       "wrap the model so its forward returns the logits tensor")
    return output


def probabilities(output: torch.Tensor) -> torch.Tensor:
    """Class probabilities: softmax over classes (sigmoid for a single-logit output)."""
    output = output.float()
    return torch.sigmoid(output) if output.shape[1] == 1 else torch.softmax(output, 1)
