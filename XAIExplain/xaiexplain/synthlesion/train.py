"""Train the SynthLesion demo classifiers and write them as MONAI bundles.

    python -m xaiexplain.synthlesion.train --kind clean --out Resources/Models/synthlesion_classifier
    python -m xaiexplain.synthlesion.train --kind shortcut --out Resources/Models/synthlesion_shortcut

Every case is freshly generated from a seed, so the training set never repeats
and evaluation seeds (>= 10**6) are never seen in training. The shortcut model
sees a bright corner marker on every positive and no negative, with subtle
lesions, so the marker is the easy way to the label ("Clever Hans").
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from ..core import bundle
from ..core.preprocess import intensity_transform
from . import synth
from .demo_model import CLASS_NAMES, SynthLesionNet

DEMO_PREPROCESSING = {"orientation": "RAS", "spacing": [3.0, 3.0, 3.0], "spatial_size": [64, 64, 64],
                      "intensity": {"kind": "percentiles", "lower": 1.0, "upper": 99.0, "b_min": 0.0, "b_max": 1.0}}
EVAL_SEED_START = 10**6
KINDS = {
    # the clean model sees the marker as often with as without a lesion, so it learns to ignore it
    "clean": dict(contrast=(0.35, 0.9), marker_if_positive=0.5, marker_if_negative=0.5),
    "shortcut": dict(contrast=(0.1, 0.25), marker_if_positive=1.0, marker_if_negative=0.0),
}


def kind_settings(kind: str) -> dict:
    """A kind's data settings (``KINDS``) as a bundle's metadata records them (JSON lists for ranges)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in KINDS[kind].items()}


class CaseStream(IterableDataset):
    def __init__(self, kind: str, n_cases: int, seed: int):
        self.kind, self.n_cases, self.seed = KINDS[kind], n_cases, seed
        self.scale = intensity_transform(DEMO_PREPROCESSING["intensity"])

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(first, self.n_cases, step):
            yield self.case(i)[:2]

    def case(self, i: int) -> tuple[torch.Tensor, int, synth.SynthCase]:
        """Case ``i`` of this stream: (model input, label, the generated case), the same on every call."""
        rng = np.random.default_rng([self.seed, i])
        positive = bool(rng.random() < 0.5)  # not alternating: BatchNorm must not learn batch composition
        marker = bool(rng.random() < self.kind["marker_if_positive" if positive else "marker_if_negative"])
        case = synth.generate_case(self.seed * 10**5 + i, positive=positive,
                                   contrast=float(rng.uniform(*self.kind["contrast"])), marker=marker)
        return torch.as_tensor(self.scale(torch.as_tensor(case.volume.array)), dtype=torch.float32), case.label, case


def train(kind: str, n_cases: int = 8000, batch: int = 16, lr: float = 1.5e-3, seed: int = 1, device: str = "cpu",
          workers: int = 1, init: str | None = None, units: int = 3) -> SynthLesionNet:
    torch.manual_seed(seed)
    model = SynthLesionNet(units=units)
    if init:  # continue from a trained bundle (fine-tuning)
        model.load_state_dict(torch.load(f"{init}/models/model.pt", map_location="cpu", weights_only=True))
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # each loader worker batches its own share of the cases: count the batches they make
    steps = sum(-(-len(range(w, n_cases, max(workers, 1))) // batch) for w in range(max(workers, 1)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loader = DataLoader(CaseStream(kind, n_cases, seed), batch_size=batch, num_workers=workers)
    model.train()
    start = time.time()
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            print(f"step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    recalibrate_batchnorm(model, kind, seed, device=device, workers=workers)
    return model.cpu().eval()


def recalibrate_batchnorm(model: SynthLesionNet, kind: str, seed: int, n_cases: int = 160, batch: int = 8,
                          device: str = "cpu", workers: int = 1) -> None:
    """Replace BatchNorm running statistics by exact averages over fresh cases (eval mode then matches)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for x, _ in DataLoader(CaseStream(kind, n_cases, seed + 7919), batch_size=batch, num_workers=workers):
            model(x.to(device))
    for m in norms:
        m.momentum = 0.1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(KINDS), default="clean")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="processes generating cases")
    parser.add_argument("--init", help="start from this bundle's weights (fine-tuning)")
    parser.add_argument("--units", type=int, default=3, help="residual units (receptive field: 15 + 16 x (units - 1))")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    previous = None
    if args.init:
        previous = json.loads(Path(args.init, "configs", "metadata.json").read_text()).get("xaiexplain", {}).get("training")
    model = train(args.kind, args.cases, args.batch, args.lr, args.seed, args.device, args.workers, args.init,
                  args.units)
    description = {"clean": "SynthLesion demo classifier (lesion vs healthy)",
                   "shortcut": "SynthLesion shortcut classifier: trained with a corner marker on every positive"}
    network_args = {} if args.units == 3 else {"units": args.units}
    bundle.write_bundle(args.out, model, "xaiexplain.synthlesion.demo_model.SynthLesionNet", network_args,
                        name=f"synthlesion_{args.kind}", description=description[args.kind],
                        class_names=CLASS_NAMES, in_channels=1, preprocessing=DEMO_PREPROCESSING,
                        extra={"training": {"kind": args.kind, "cases": args.cases, "seed": args.seed, "batch": args.batch,
                                            "lr": args.lr, "device": args.device, "fine_tuned_from": previous,
                                            "torch": torch.__version__, **kind_settings(args.kind)}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
