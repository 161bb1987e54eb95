"""The one scorer: target scores of batches of model-space inputs, counted in forward passes.

The perturbation methods and the metrics both score many altered copies of one
volume. ``Scorer(ctx, n, total)`` serves the methods: a faster, verified copy of
the network (``inference.py``), a batch size from the free memory and the
model's footprint measured on one probe pass, incremental scoring of boxes on a
CPU (``incremental.py``), progress and the cancel flag between batches.
``Scorer.for_model(model, x)`` serves the metrics: the network exactly as given
in evaluation mode, a fixed batch size, one chosen output, so that a metric's
value does not depend on the machine's free memory or on float rounding of a
folded copy.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

from ...core.memory import free_memory
from ...core.models import LoadedModel, evaluation_mode, load_model, model_output, probabilities
from ...core.targets import ClassTarget
from ..base import Context
from .incremental import IncrementalNetwork, local_share
from .inference import InferenceNetwork, agrees
from .perturbation import check_score, paste

MEMORY_SHARE = 0.4  # of the free memory, for the perturbed batch and its activations
MAX_BATCH = {"cpu": 16, "cuda": 128}  # more brings nothing on a CPU (measured) and little on a GPU
# Incremental scoring copies each box with a few slice copies per layer: on a CPU that is far cheaper
# than the full volumes; on a GPU the extra small kernel launches outweigh the saved arithmetic.
INCREMENTAL_DEVICES = ("cpu",)
INCREMENTAL_MEMORY = 3  # x one volume's footprint: every layer's unperturbed output, plus padded copies
CHOSEN_BY_TIME = True  # boxes only where they took less time than full passes on the first batch; else wherever
# they match them
# Boxes skip at most the work of the layers they run through: below this share of the layers (deepbet: its first
# convolution, then instance norms over the whole volume) keeping every layer's output costs more than it saves
MIN_LOCAL_SHARE = 0.1
INCREMENTAL_SHARE = 0.4  # time of a box scored incrementally / a batched full pass (demo, CPU: 0.31-0.48)
METRIC_BATCH = 8  # the metrics' fixed batch: their values stay the same on every machine


def incremental_share(model: LoadedModel, device: torch.device) -> float:
    """What a box (a patch, a region) scored incrementally costs, in batched full passes, on ``device``: on a CPU,
    for networks whose layers can be traced (as the scorer decides: not TorchScript, full passes there), less
    the more of the layers a box runs through (``local_share``: read from the graph)."""
    if not model.has_layers or torch.device(device).type not in INCREMENTAL_DEVICES:
        return 1.0
    share = local_share(model.network)
    return 1.0 if share < MIN_LOCAL_SHARE else 1.0 - (1.0 - INCREMENTAL_SHARE) * share


def thread_counts(available: int) -> list[int]:
    """The intra-op thread counts the scorer tries: torch's (``available``), and one (no barriers between
    threads, which stall the many small box operations when another process holds a core)."""
    return sorted({available, 1}, reverse=True)


@contextmanager
def threads(count: int | None):
    """torch's intra-op threads set to ``count`` while the block runs (None: as they are)."""
    before = torch.get_num_threads()
    if count and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def timed(run):
    """(seconds, result) of ``run()``."""
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def inference_network(ctx: Context) -> InferenceNetwork:
    """The faster copy of the network, built once per method call (verified on the first probe pass)."""
    if "inference" not in ctx.cache:
        ctx.cache["inference"] = InferenceNetwork(ctx.model.network, ctx.model.has_layers)
    return ctx.cache["inference"]


@contextmanager
def layer_output_sizes(module: torch.nn.Module, enabled: bool = True):
    """The bytes of every layer's output while the block runs, in the list it yields (forward hooks; nothing
    when not ``enabled``, e.g. TorchScript, which hides its layers)."""
    sizes: list[int] = []

    def hook(_module, _inputs, output):
        if torch.is_tensor(output):
            sizes.append(output.numel() * output.element_size())

    hooks = [m.register_forward_hook(hook) for m in module.modules()] if enabled else []
    try:
        yield sizes
    finally:
        for h in hooks:
            h.remove()


def measure_footprint(network: InferenceNetwork, x: torch.Tensor) -> tuple[int, float, torch.Tensor]:
    """(bytes, seconds, output) of one forward pass on one volume: peak allocation on a GPU, every layer's
    output elsewhere."""
    device = x.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
    with layer_output_sizes(network.module, device.type != "cuda" and network.has_layers) as sizes:
        start = time.perf_counter()
        with torch.inference_mode():
            output = network(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        used = torch.cuda.max_memory_allocated(device) - start_bytes
    elif sizes:
        used = sum(sizes)  # an upper bound: inference frees most outputs once the next layer has run
    else:
        used = 40 * x.numel() * x.element_size()  # TorchScript hides its layers: a cautious guess
    return int(used + 2 * x.numel() * x.element_size()), seconds, output


class GivenNetwork:
    """The network as given, in evaluation mode, float output: what ``LoadedModel.output`` computes."""

    how = "as given"

    def __init__(self, model):
        self.model, self.module, self.has_layers = model, model.network, model.has_layers

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with evaluation_mode(self.model):
            return model_output(self.model.network(batch)).float()


WINDOWED_BATCH = 2  # copies a sliding-window scorer blends at once: each is a whole scan's output


class WindowedNetwork:
    """The blended output of the windows that hold the target (exact wherever the target reads it)."""

    how = "sliding windows (the target's only)"
    has_layers = False

    def __init__(self, ctx: Context, n: int):
        self.ctx, self.n = ctx, n
        self.module = ctx.model.network

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        windows = self.ctx.model.windows
        _, _, touched = windows.weights(batch[:1], self.ctx.output_gradient(), self.n)
        with evaluation_mode(self.ctx.model):
            return windows.forward(batch, touched).float()


class Scorer:
    """Scores batches of altered copies of sample ``n`` of ``ctx.x`` (logit and probability of the target).

    Forward passes are counted in ``ctx.passes`` (``passes``), in volumes. ``output`` ('logit' or
    'probability': softmax over classes, sigmoid for a single logit) is what ``scores`` and ``base`` give.
    """

    def __init__(self, ctx: Context, n: int = 0, total: int = 0, batch_size=None, label: str = "perturbations",
                 *, fast: bool = True, output: str = "probability", approximate: float | None = None):
        self.ctx, self.n, self.total, self.label = ctx, n, int(total), label
        # approximate: boxes may keep normalisations at the unperturbed statistics, if the first batch's scores
        # stay within this share of its largest drop
        self.approximate = approximate
        self.output = check_score(output)
        self.x = ctx.x[n:n + 1]
        self.rows = torch.full((1,), n, dtype=torch.long, device=ctx.x.device)
        self.done = 0
        self.started = None
        self.threads = None  # intra-op threads for local() calls, chosen on the first on a CPU (None: torch's)
        self.available_threads = torch.get_num_threads()
        if ctx.model.inferer is not None:  # sliding windows: only the target's windows, and of them those a box meets
            self.network, self.footprint, self.incremental = WindowedNetwork(ctx, n), None, "windows"
            self.batch_size = max(1, min(int(batch_size or WINDOWED_BATCH), max(self.total, 1)))
            self.facts = {"batch_size": self.batch_size, "batch_size_chosen": "given" if batch_size else "auto",
                          "network": self.network.how, "perturbations": self.total,
                          "incremental": "sliding windows: a box runs again only the target's windows it meets"}
        elif fast:
            self._size_batches(batch_size)
        else:  # full passes of the network as given: no probe, no folding, no incremental scoring
            self.network, self.footprint, self.incremental = GivenNetwork(ctx.model), None, None
            self.batch_size = max(1, int(batch_size or METRIC_BATCH))
            self.facts = {"batch_size": self.batch_size, "batch_size_chosen": "given", "network": self.network.how}
        reference = ctx.reference[n:n + 1]  # the unperturbed output, computed once by the caller
        self.logit = float(ctx.score(reference, self.rows)[0])
        self.probability = float(ctx.score(probabilities(reference, ctx.model.output_kind), self.rows)[0])

    @classmethod
    def for_model(cls, model, x: torch.Tensor, target=None, output: str = "logit",
                  batch_size: int = METRIC_BATCH) -> Scorer:
        """The metrics' scorer of the model-space input ``x`` (1, C, X, Y, Z) for ``target`` (resolved on the
        model's output at ``x``); that reference pass is not counted."""
        model = model if isinstance(model, LoadedModel) else load_model(model, device=None)
        x = x.detach().to(model.device)
        reference = model.output(x)
        target = target if hasattr(target, "score") else ClassTarget(target)
        ctx = Context(model, x, target.resolve(reference, model.class_names), reference)
        return cls(ctx, batch_size=batch_size, label="scores", fast=False, output=output)

    @property
    def passes(self) -> int:
        return self.ctx.passes["forward"]

    @property
    def base(self) -> float:
        """The unperturbed score in ``output``."""
        return self.reference(self.output)

    def _size_batches(self, batch_size) -> None:
        """Build the inference copy, verify it on one probe pass and size the batches from its footprint."""
        ctx = self.ctx
        self.incremental = False  # built on the first local() call
        self.network = inference_network(ctx)
        footprint, seconds, output = measure_footprint(self.network, self.x)
        self.footprint = footprint
        self.network.verify(output, ctx.reference[self.n:self.n + 1])  # the probe pass doubles as the copy's check
        ctx.passes["forward"] += 1
        limit = MAX_BATCH.get(self.x.device.type, 32)
        auto = int(MEMORY_SHARE * free_memory(self.x.device) // max(footprint, 1))
        size = max(1, min(int(batch_size) if batch_size else min(auto, limit), max(self.total, 1)))
        if not batch_size:  # equal batches: 113 as 8 x 15 rather than 7 x 16 + 1 (a lone volume runs slowly)
            size = -(-self.total // -(-self.total // size)) if self.total else size
        self.batch_size = size
        self.facts = {"batch_size": self.batch_size, "batch_size_chosen": "given" if batch_size else "auto",
                      "footprint_mb_per_volume": round(footprint / 2**20, 2), "probe_seconds": round(seconds, 4),
                      "perturbations": self.total, "network": self.network.how}
        ctx.report(0.0, f"{self.label}: {self.total} forward passes, about {seconds * self.total:.0f} s "
                        f"at batch size {self.batch_size}")

    def slices(self, count: int | None = None):
        """Slices over the perturbations (or the next ``count`` of them), one batch each."""
        count = self.total if count is None else count
        for start in range(0, count, self.batch_size):
            yield slice(start, min(count, start + self.batch_size))

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit scores, probability scores) of a perturbed batch, as float64 on the CPU."""
        self._start()
        with torch.inference_mode(), threads(self.threads):
            return self._scores(self.network(batch))

    def scores(self, inputs: torch.Tensor, output: str | None = None) -> np.ndarray:
        """Scores (float64) in ``output`` (default: the scorer's) of any number of inputs, a batch at a time."""
        out = []
        for part in self.slices(int(inputs.shape[0])):
            logits, probs = self(inputs[part].to(self.x.device))
            out.append(self.pick(logits, probs, output or self.output))
        return torch.cat(out).numpy()

    def local(self, values: torch.Tensor, starts) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of copies of the sample, copy b with the box at ``starts[b]`` (B, D) holding ``values[b]``.

        Computed incrementally (``incremental.py``) on a CPU once that has matched full passes, else as full
        volumes."""
        self._start()
        starts = torch.as_tensor(starts, dtype=torch.long).cpu().reshape(values.shape[0], -1)
        if self.incremental == "windows":
            windows = self.ctx.model.windows
            with torch.inference_mode():
                if not windows.boxes_exact(self.x):  # padding that copies the volume: whole copies
                    return self._scores(self.network(paste(self.x, values, starts)))
                logits, probs = windows.local_scores(
                    self.x, self.ctx.output_gradient(), self.n, self.ctx.reference[self.n:self.n + 1],
                    values, starts, lambda out: probabilities(out, self.ctx.model.output_kind))
            return self._counted(self.logit + logits, self.probability + probs)
        with torch.inference_mode(), threads(self.threads):
            if self.incremental is False:  # first call: build, and check on the first two copies
                return self._scores(self._first_local(values, starts))
            if self.incremental is None:
                return self._scores(self.network(paste(self.x, values, starts)))
            return self._scores(self.incremental(values, starts))

    def _first_local(self, values, starts) -> torch.Tensor:
        """Scores the first batch; builds the incremental network where it is allowed and matches full passes."""
        self.incremental = None
        frozen = self.approximate is not None
        check, rest = slice(0, min(2, values.shape[0])), slice(min(2, values.shape[0]), None)
        if not self.network.has_layers:
            self.facts["incremental"] = "no (TorchScript: its graph cannot be traced)"
        elif self.x.device.type not in INCREMENTAL_DEVICES:
            self.facts["incremental"] = f"no (full volumes: the default on {self.x.device.type})"
        elif INCREMENTAL_MEMORY * self.footprint > free_memory(self.x.device):
            self.facts["incremental"] = "no (not enough free memory to keep every layer's unperturbed output)"
        elif local_share(self.network.module, frozen) < MIN_LOCAL_SHARE:
            self.facts["incremental"] = (f"no (boxes could run through only "
                                         f"{local_share(self.network.module, frozen):.0%} of the layers: the input "
                                         f"soon meets one that mixes the whole volume)")
        if "incremental" in self.facts:
            if self.x.device.type != "cpu":
                return self.network(paste(self.x, values, starts))
            _, self.threads, expected = self._fastest(lambda: self.network(paste(self.x, values[check],
                                                                                 starts[check])))
            self.facts["threads"] = f"{self.threads} of {self.available_threads} (the faster on the first batch)"
            return self._with_rest(expected, values, starts)
        x = self.x.contiguous(memory_format=torch.channels_last_3d) if self.x.dim() == 5 else self.x
        # the first two copies are scored both ways and timed under each thread count, after the rest has
        # warmed the boxes' buffers: on a busy CPU fewer threads than cores can be several times faster
        full_seconds, full_threads, expected = self._fastest(
            lambda: self.network(paste(self.x, values[check], starts[check])))
        try:
            network = IncrementalNetwork(self.network.module, x, frozen_norms=frozen)
            got = network(values[rest], starts[rest]) if values.shape[0] > 2 else None
            box_seconds, box_threads, boxed = self._fastest(lambda: network(values[check], starts[check]))
            failure = self._compare(network, boxed, expected)
        except Exception as err:  # noqa: BLE001 - untraceable or unusual graphs are scored as full volumes
            failure = f"could not be traced: {type(err).__name__}"
        if failure:
            self.threads = full_threads
            self.facts["incremental"] = f"no ({failure})"
            return self._with_rest(expected, values, starts)
        where = f"{network.local_layers} of {network.layers} layers run on boxes" + \
            (f" up to '{network.stopped_at}'" if network.stopped_at else "")
        share = box_seconds / max(full_seconds, 1e-9)
        if network.local_layers == 0:
            self.facts["incremental"] = "no (the first layer already mixes the whole volume)"
        elif share >= 1.0 and CHOSEN_BY_TIME:  # measured both ways: the boxes' bookkeeping outweighs their saving
            self.facts["incremental"] = f"no (boxes took {share:.2f}x the full passes on the first batch: {where})"
        else:
            self.facts["incremental"] = (f"yes: {where}, {share:.2f}x the time of full passes on the first batch "
                                         f"(same scores, checked)")
            self.incremental = network
        self.threads = box_threads if self.incremental is not None else full_threads
        self.facts["threads"] = f"{self.threads} of {self.available_threads} (the faster on the first batch)"
        return expected if got is None else torch.cat([expected, got])

    def _with_rest(self, expected, values, starts) -> torch.Tensor:
        """The first batch's outputs: ``expected`` for its first two copies, full passes for the rest, on the
        threads chosen."""
        if values.shape[0] <= 2:
            return expected
        with threads(self.threads):
            return torch.cat([expected, self.network(paste(self.x, values[2:], starts[2:]))])

    def _compare(self, network, boxed, expected) -> str | None:
        """Why the boxes' output cannot stand for the full passes' (None: it can). Exact boxes must agree to
        float rounding; frozen normalisations within ``approximate`` of the largest drop of the target."""
        if not network.affine:
            return None if agrees(boxed, expected) else "its output differed from the full pass"
        rows = self.rows.expand(expected.shape[0])
        full, approx = self.ctx.score(expected, rows).double(), self.ctx.score(boxed, rows).double()
        drop = float((full - self.logit).abs().max())
        error = float((approx - full).abs().max()) / max(drop, 1e-12)
        self.facts["frozen_norms"] = (f"{len(network.affine)} normalisations kept at the unperturbed volume's "
                                      f"statistics: target error {error:.3f} of the largest drop on the first batch "
                                      f"(tolerance {self.approximate})")
        return None if error <= self.approximate else \
            f"normalisations kept at the unperturbed statistics missed by {error:.2f} of the drop"

    def _fastest(self, run) -> tuple[float, int, torch.Tensor]:
        """(seconds, threads, result) of ``run`` under the thread count it ran fastest with: torch's, or one
        thread (each timed once; the first run is kept as the result)."""
        result, best = None, None
        for count in thread_counts(self.available_threads):
            with threads(count):
                seconds, out = timed(run)
            result = out if result is None else result
            if best is None or seconds < best[0]:
                best = (seconds, count)
        return best[0], best[1], result

    def _start(self):
        if self.started is None:
            self.started = time.perf_counter()

    def _scores(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows.expand(int(output.shape[0]))
        logits = self.ctx.score(output, rows).double().cpu()
        probs = self.ctx.score(probabilities(output, self.ctx.model.output_kind), rows).double().cpu()
        return self._counted(logits, probs)

    def _counted(self, logits: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores of a batch, counted as its forward passes, with progress reported."""
        count = int(logits.shape[0])
        self.ctx.passes["forward"] += count
        self.done += count
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        self.ctx.report(self.done / max(self.total, 1), f"{self.label} {self.done}/{self.total}, {eta:.0f} s left")
        return logits, probs

    def pick(self, logits, probs, score: str):
        return logits if check_score(score) == "logit" else probs

    def reference(self, score: str) -> float:
        return self.logit if check_score(score) == "logit" else self.probability
