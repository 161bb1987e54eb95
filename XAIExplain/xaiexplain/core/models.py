"""Load models from every supported format behind one :class:`LoadedModel`.

Formats: a ``torch.nn.Module`` from Python; a MONAI bundle folder; a
``torch.export`` program (``.pt2``, run through ``torch.export.unflatten`` so
its layers stay reachable by name); a TorchScript file (its layers are hidden
from hooks, so layer methods refuse it). A ``<model>.json`` file beside a
TorchScript or ``.pt2`` file may give ``class_names``, ``in_channels``,
``task``, ``preprocessing`` (orientation, spacing, size, intensity) and
``output`` ("logits" or "probabilities").
"""
from __future__ import annotations

import json
import types
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import XAIError
from .preprocess import PreprocessSpec
from .provenance import file_sha256
from .windows import SlidingWindows, WindowSpec

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
    converted_from: str | None = None  # "torchscript" once with_layers() converted it
    output_kind: str | None = None  # "logits" | "probabilities" (the network ends in softmax/sigmoid); None: detect
    input_shape: tuple | None = None  # what a .pt2 program was exported for: an int per fixed axis, None per free one
    inferer: WindowSpec | None = None  # a sliding-window inferer: the network runs on windows of the whole scan
    _windows: SlidingWindows | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def windows(self) -> SlidingWindows | None:
        """The sliding-window runner of ``inferer`` (None without one); it calls whatever ``network`` is now."""
        if self.inferer is None:
            return None
        windows = self._windows
        if windows is None or windows.spec is not self.inferer or windows.owner is not self:  # a copy's own
            windows = self._windows = SlidingWindows(self.inferer, lambda batch: model_output(self.network(batch)))
            windows.owner = self
        return windows

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
                "preprocessing": self.preprocessing.to_dict(), "notes": list(self.notes),
                "converted_from": self.converted_from,
                "inferer": None if self.inferer is None else {"kind": "sliding-window", **self.inferer.to_dict()}}

    def named_layers(self) -> dict[str, nn.Module]:
        if not self.has_layers:
            raise XAIError("this method needs the model's layers, which a TorchScript file hides",
                           "give the model as a MONAI bundle, a torch.export .pt2 file or a torch.nn.Module")
        return dict(self.network.named_modules())

    def with_layers(self, example: torch.Tensor) -> "LoadedModel":
        """This model with its layers reachable: a TorchScript network becomes a ``torch.export`` program.

        TorchScript hides its layers from hooks and from the propagation rules. torch's
        converter restates it as a program (see ``core.conversion``); the program is used
        only if it gives the TorchScript's own output on ``example`` (a model-space batch).
        """
        if self.has_layers:
            return self
        from .conversion import program_from_torchscript
        if self.inferer is not None:  # the network runs on windows: converted, and checked, on the first one
            example = self.windows.first_window(example)
        sample = example[:1].detach().to(self.device)
        sample = sample.expand(2, *sample.shape[1:]).contiguous()  # a batch of 2 keeps the batch size free
        refuse = ("give the model as a MONAI bundle, a torch.export .pt2 file or a torch.nn.Module, or use a "
                  "method that needs no layers (gradient, integrated-gradients, occlusion)")
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                program = program_from_torchscript(self.network, sample)
                expected, got = self.network(sample), program(sample)
        except Exception as err:  # the converter's failures are many and varied
            first = (str(err).splitlines() or [type(err).__name__])[0][:120]
            raise XAIError("this method needs the model's layers, which a TorchScript file hides, and converting "
                           f"it to a torch.export program failed ({first})", refuse) from None
        expected, got = model_output(expected).float(), model_output(got).float()
        difference = float((expected - got).abs().max()) if expected.shape == got.shape else float("inf")
        if not difference <= 1e-4 * max(1.0, float(expected.abs().max())):
            raise XAIError("this method needs the model's layers, which a TorchScript file hides, and its "
                           f"conversion to a torch.export program computes another output (differs by {difference:.2g})",
                           refuse)
        self.network, self.format, self.converted_from = program, "export", "torchscript"
        self.notes.append(f"TorchScript converted to a torch.export program for the layer methods "
                          f"(outputs agree within {difference:.1g})")
        return self

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output (float, detached) for a model-space batch, in eval mode without autograd."""
        with torch.inference_mode(), evaluation_mode(self):
            try:
                x = x.to(self.device)
                out = (self.windows.forward(x) if self.inferer else model_output(self.network(x))).float()
            except RuntimeError as err:
                raise XAIError(f"the model failed on the input ({str(err).splitlines()[0][:160]})",
                               "check channels, size and preprocessing (--spacing/--size) against the model") from None
        out = out.clone()  # a normal tensor: inference tensors cannot enter autograd later
        if self.output_kind is None:
            self.output_kind = self._detect_output_kind(x, out)
        return out

    def _detect_output_kind(self, x: torch.Tensor, out: torch.Tensor) -> str:
        """Logits, or probabilities already (a final softmax/sigmoid): never take them twice."""
        in_unit_range = bool(((out >= -1e-6) & (out <= 1 + 1e-6)).all())
        if out.shape[1] > 1:
            sums_to_one = bool((out.double().sum(1) - 1).abs().max() <= 1e-3)
            kind = "probabilities" if in_unit_range and sums_to_one else "logits"
            reason = "its outputs are in [0, 1] and sum to 1 over the classes"
        else:
            if self.inferer is not None:  # the network itself runs on windows: asked on the first
                x = self.windows.first_window(x)
            kind = "probabilities" if in_unit_range and final_call(self, x) == "sigmoid" else "logits"
            reason = "it ends in a sigmoid"
        if kind == "probabilities":
            self.notes.append(f"the model's output is taken as probabilities ({reason}): no softmax is added; "
                              "say \"output\": \"logits\" in its metadata if that is wrong")
        return kind

    def predict(self, x: torch.Tensor) -> dict:
        """What the model says about a model-space volume (1, C, X, Y, Z): see :func:`prediction`."""
        out = self.output(x)
        return prediction(out, self.class_names, self.output_kind)


# Denormal floats flushed to zero, once, for the whole process. Trained networks hold and make numbers
# below float32's smallest normal one (half of HD-BET's weights, and its gradients): numerically nothing,
# but CPUs compute with them in microcode: HD-BET's backward pass ran about 20 times slower. The flag is
# per thread and torch's worker threads copy it when they start, so it is set when the engine is loaded.
torch.set_flush_denormal(True)


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


def prediction(logits: torch.Tensor, class_names, output_kind: str | None = "logits") -> dict:
    """A classifier's predicted class and probabilities, or a segmentation's voxels per class (sample 0)."""
    if logits.ndim == 2:
        probs = probabilities(logits.double(), output_kind)[0]
        if probs.numel() == 1:  # a single logit: the probability of class 1
            probs = torch.cat([1 - probs, probs])
        k = int(probs.argmax())
        return {"task": "classification", "predicted_class": k,
                "predicted_name": class_names[k] if class_names else str(k),
                "probabilities": [round(float(p), 6) for p in probs], "output_kind": output_kind or "logits",
                "logits": [float(v) for v in logits[0]] if output_kind != "probabilities" else None,
                "class_names": class_names}
    labels = logits[0].argmax(0)
    counts = torch.bincount(labels.flatten(), minlength=logits.shape[1])
    return {"task": "segmentation", "voxels_per_class_model_space": [int(c) for c in counts],
            "output_kind": output_kind or "logits", "class_names": class_names}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise XAIError(f"unknown device '{device}'", "use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise XAIError(f"device '{device}' is not one XAIExplain runs on", "use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise XAIError("a GPU was requested but PyTorch sees none", "use --device cpu or auto")
    return device


def _first_conv_channels(network: nn.Module) -> int | None:
    for module in network.modules():
        if isinstance(module, (nn.Conv3d, nn.Conv2d, nn.Conv1d)):
            return module.in_channels
    return None


SIDECAR_KEYS = ("class_names", "in_channels", "task", "preprocessing", "output", "inferer")
OUTPUT_KINDS = ("logits", "probabilities")


def _sidecar(path: Path) -> dict:
    side = path.with_suffix(".json")
    if not side.exists():
        return {}
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise XAIError(f"model metadata '{side}' is not valid JSON ({err.msg})", "fix or remove the file") from None
    unknown = sorted(set(meta) - set(SIDECAR_KEYS)) if isinstance(meta, dict) else ["(not an object)"]
    if unknown:
        raise XAIError(f"model metadata '{side}' has unknown keys {unknown}", f"use {', '.join(SIDECAR_KEYS)}")
    return meta


def _output_kind(value):
    if value is not None and value not in OUTPUT_KINDS:
        raise XAIError(f"unknown model output kind {value!r}",
                       "say 'logits' or 'probabilities' (the network already ends in softmax or sigmoid)")
    return value


def _inferer(value, current: WindowSpec | None = None) -> WindowSpec | None:
    """A sliding-window inferer from its settings ({} or None: none); given with a ``current`` one, they change
    ``current``'s (its other settings stay)."""
    if value is None or isinstance(value, WindowSpec):
        return value
    if not isinstance(value, dict):
        raise XAIError(f"the sliding-window inferer {value!r} is not a set of settings",
                       "give {\"roi_size\": [96, 96, 96], \"overlap\": 0.25, ...}")
    if not value:
        return None
    if current is not None:  # what is given changes the model's own settings, the rest stay
        value = {**current.to_dict(), **value}
    return WindowSpec.from_dict(value)


def _load_file(path: Path) -> tuple[nn.Module, str, list[str], tuple | None]:
    """(network, format, notes, the input shape a .pt2 program fixes) of a model file."""
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as err:
            raise XAIError(f"cannot read torch.export program '{path}' ({type(err).__name__})",
                           "re-export it with torch.export.save") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = torch.export.unflatten(program)
        shape = _static_input_shape(program)
        notes = []
        if shape and shape[0] is not None:
            if shape[0] != 1:
                raise XAIError(f"the program '{path}' was exported for batches of exactly {shape[0]} volumes",
                               "re-export it with a batch of 1 or a dynamic batch size (torch.export.Dim)")
            # methods run batches (integrated gradients, perturbations): a batch-of-1 program takes them one by one
            network.forward = types.MethodType(_one_at_a_time(network.forward), network)
            notes.append("the program was exported for a batch of 1: batches run one volume at a time")
        return network, "export", notes, shape
    if not zipfile.is_zipfile(path):
        raise XAIError(f"'{path}' is not a TorchScript, .pt2 or bundle model (not a PyTorch archive)",
                       "check the file is complete and in one of these formats")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu"), "torchscript", [
                "TorchScript hides layers from hooks: the layer methods run on its conversion to a torch.export "
                "program, or refuse"], None
    except RuntimeError:
        pass
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise XAIError(f"cannot read model '{path}' ({type(err).__name__})",
                       "the file is corrupt or not a TorchScript/.pt2 model") from None
    raise XAIError(f"'{path}' holds weights only, not a network",
                   "give a TorchScript file, a .pt2 program or a MONAI bundle, or pass the nn.Module from Python")


def _one_at_a_time(forward):
    def run(self, x, *args, **kwargs):
        if x.shape[0] == 1:
            return forward(x, *args, **kwargs)
        outputs = [forward(x[i:i + 1], *args, **kwargs) for i in range(x.shape[0])]
        if isinstance(outputs[0], (tuple, list)):
            return type(outputs[0])(torch.cat(parts) for parts in zip(*outputs))
        return torch.cat(outputs)
    return run


def _static_input_shape(program) -> tuple | None:
    """The first input's shape as the program fixes it: an int per fixed dimension, None per free one."""
    names = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and names and node.name == names[0]:
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor):
                return tuple(int(d) if isinstance(d, int) else None for d in value.shape)
    return None


def check_input_shape(model: LoadedModel, x: torch.Tensor) -> None:
    """Refuse, before any pass, a model-space input of another size than a program fixed at export."""
    fixed = model.input_shape
    if not fixed or len(fixed) != x.ndim:
        return
    wrong = [i for i, (want, have) in enumerate(zip(fixed, x.shape)) if want is not None and want != have and i > 0]
    if not wrong:
        return
    expects = "(" + ", ".join("N" if i == 0 else str(d) if d is not None else "any" for i, d in enumerate(fixed)) + ")"
    spatial = [d if d is not None else "any" for d in fixed[2:]]
    raise XAIError(f"the model was exported for inputs of shape {expects} but this volume is {tuple(x.shape)} in "
                   "model space (MONAI's channel-first layout: N, C, then the I, J, K axes of the volume after "
                   "preprocessing)",
                   f"set --size {' '.join(map(str, spatial))} (crop/pad) and/or --spacing/--orientation so the volume "
                   "fits, or re-export the program with dynamic spatial sizes (torch.export.Dim)")


def load_model(source, *, class_names: list[str] | None = None, in_channels: int | None = None,
               task: str | None = None, preprocessing: dict | PreprocessSpec | None = None,
               device: str | torch.device | None = "auto", output: str | None = None,
               inferer: dict | WindowSpec | None = None) -> LoadedModel:
    """Load ``source`` (path or ``nn.Module``); arguments given here override the model's own metadata.

    ``output``: "logits" or "probabilities" (the network ends in softmax/sigmoid); when
    neither the metadata nor the caller says, it is read from the first output. ``inferer``: a
    sliding-window inferer's settings (``roi_size``, ``overlap``, ``mode``, ``sigma_scale``,
    ``sw_batch_size``; MONAI's names), read from a bundle's ``inferer`` or a sidecar's ``"inferer"`` when not
    given; ``{}`` drops the model's own.
    """
    notes: list[str] = []
    meta: dict = {}
    input_shape = None
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
            digest = file_sha256(path)
            where = str(path)
            if path.is_dir():
                from .bundle import read_bundle
                info = read_bundle(path)
                network, fmt = info["network"], "bundle"
                meta = {"class_names": info["class_names"], "in_channels": info["in_channels"],
                        "task": info["task"], "preprocessing": info["preprocessing"], "output": info["output"],
                        "inferer": info["inferer"]}
                notes.append("a MONAI bundle runs the code its config names; load only bundles you trust")
                if info["ignored_transforms"]:
                    notes.append(f"bundle preprocessing steps not reproduced: {', '.join(info['ignored_transforms'])}")
            else:
                network, fmt, extra, input_shape = _load_file(path)
                notes += extra
                meta = _sidecar(path)
        model = LoadedModel(network, fmt, meta.get("class_names"), meta.get("in_channels"), meta.get("task"),
                            meta.get("preprocessing") if isinstance(meta.get("preprocessing"), PreprocessSpec)
                            else PreprocessSpec.from_dict(meta.get("preprocessing")), where, digest, notes)
        model.output_kind = _output_kind(meta.get("output"))
        model.input_shape = input_shape
        model.inferer = None if inferer == {} else _inferer(meta.get("inferer"))  # {}: not even read
        if model.in_channels is None and model.has_layers:
            model.in_channels = _first_conv_channels(network)
    if class_names is not None:
        model.class_names = list(class_names)
    if in_channels is not None:
        model.in_channels = int(in_channels)
    if task is not None:
        model.task = task
    if output is not None:
        model.output_kind = _output_kind(output)
    if inferer is not None:
        model.inferer = _inferer(inferer, model.inferer)
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


def probabilities(output: torch.Tensor, output_kind: str | None = "logits") -> torch.Tensor:
    """Class probabilities: the output itself if it is probabilities, else its softmax (sigmoid for one logit)."""
    output = output.float()
    if output_kind == "probabilities":
        return output
    return torch.sigmoid(output) if output.shape[1] == 1 else torch.softmax(output, 1)


def final_call(model: LoadedModel, x: torch.Tensor) -> str | None:
    """'sigmoid' or 'softmax' when the network's output is made by one, else None (one forward pass)."""
    names = ("sigmoid", "softmax")
    if model.format == "torchscript":
        graph = getattr(model.network, "graph", None)
        if graph is None:
            return None
        made_by = next(graph.return_node().inputs()).node().kind()  # e.g. "aten::sigmoid"
        return next((n for n in names if made_by.endswith(n) or made_by.endswith(n + "_")), None)
    from torch.overrides import TorchFunctionMode

    class Watch(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.made = {}  # id of each tensor made -> the call that made it

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                self.made[id(out)] = str(getattr(func, "__name__", func))
            return out

    with torch.inference_mode(), evaluation_mode(model), Watch() as watch:
        out = model_output(model.network(x[:1].to(model.device)))
        name = watch.made.get(id(out), "")
    return next((n for n in names if n in name), None)
