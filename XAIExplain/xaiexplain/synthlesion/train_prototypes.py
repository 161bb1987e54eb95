"""Train the SynthLesion prototype networks and write them as MONAI bundles.

    python -m xaiexplain.synthlesion.train_prototypes --kind clean --out Resources/Models/synthlesion_prototypes
    python -m xaiexplain.synthlesion.train_prototypes --kind shortcut \
        --out Resources/Models/synthlesion_prototypes_shortcut

ProtoPNet's schedule (Chen et al. 2019), on generated cases held in memory: the backbone starts from the
SynthLesion classifier of the same kind (its BatchNorm statistics kept); a warm-up trains the latent layers
and the prototypes with the backbone frozen, then everything together, with the cross-entropy plus a cluster
cost (each case near a prototype of its class) and a separation cost (lesion prototypes far from every cell of
a healthy brain); then each prototype is pushed onto its nearest latent cell among the training cases of its
class, whose input patches are stored; last, the linear layer alone is fitted on the pushed similarities,
with an L1 cost on the connections to the other class.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core import bundle
from ..protocol import models_dir
from .demo_model import CLASS_NAMES
from .prototype_model import NEAREST, PATCH, PrototypeNet3D
from .train import DEMO_PREPROCESSING, EVAL_SEED_START, KINDS, CaseStream, kind_settings

BACKBONES = {"clean": "synthlesion_classifier", "shortcut": "synthlesion_shortcut"}
CLUSTER, SEPARATION, L1 = 0.8, 0.08, 1e-4
LESION = 1


def prototype_costs(model: PrototypeNet3D, latent: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(cluster, separation): the mean over cases of the smallest distance to a prototype of the own class, and
    over healthy cases of the smallest distance to a lesion prototype."""
    d = model.head.similarity.distances(latent).flatten(2).amin(2)  # (N, P)
    own = model.head.prototype_class[None] == y[:, None]
    cluster = d.masked_fill(~own, float("inf")).amin(1).mean()
    healthy = y != LESION
    lesion_prototypes = model.head.prototype_class == LESION
    separation = d[healthy][:, lesion_prototypes].amin(1).mean() if healthy.any() else d.new_zeros(())
    return cluster, separation


def training_set(kind: str, n_cases: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_cases`` of ``CaseStream(kind, n_cases, seed)`` in memory: (inputs (N, 1, X, Y, Z), labels (N,))."""
    stream = CaseStream(kind, n_cases, seed)
    pairs = [stream.case(i)[:2] for i in range(n_cases)]
    return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])


def fit(model: PrototypeNet3D, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float,
        backbone_lr: float, seed: int) -> None:
    """Cross-entropy + cluster - separation on random batches of (x, y), the backbone at ``backbone_lr`` (0:
    frozen); its BatchNorm stays in eval mode (the classifier's statistics)."""
    model.train()
    model.features.eval()
    for p in model.features.parameters():
        p.requires_grad_(backbone_lr > 0)
    groups = [{"params": list(model.add_on.parameters()) + [model.head.similarity.prototype_vectors], "lr": lr}]
    if backbone_lr > 0:
        groups.append({"params": list(model.features.parameters()), "lr": backbone_lr})
    opt = torch.optim.Adam(groups)
    draw = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        rows = torch.randint(0, len(x), (batch,), generator=draw)
        latent = model.latent(x[rows])
        cluster, separation = prototype_costs(model, latent, y[rows])
        loss = F.cross_entropy(model.head(latent), y[rows]) + CLUSTER * cluster - SEPARATION * separation
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # the latent space is the unit cube (sigmoid): keep prototypes inside it
            model.head.similarity.prototype_vectors.clamp_(0, 1)
        if step % 50 == 0:
            print(f"  step {step}/{steps} loss {loss.item():.4f} cluster {cluster.item():.3f} "
                  f"separation {separation.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()


def _patch(x: torch.Tensor, cell, scale: int) -> torch.Tensor:
    """The PATCH^3 input patch (C, P, P, P) centred on latent ``cell``'s receptive field, zero outside the input.
    The backbone's stride-2 convolutions (kernel 3, padding 1) centre cell c on input voxel ``scale`` x c."""
    half = PATCH // 2
    padded = F.pad(x, (half,) * 6)
    corner = [int(c) * scale for c in cell]  # the centre, shifted by the padding: the patch's first voxel
    return padded[:, corner[0]:corner[0] + PATCH, corner[1]:corner[1] + PATCH, corner[2]:corner[2] + PATCH]


def _nearest_cells(model: PrototypeNet3D, x: torch.Tensor, y: torch.Tensor) -> list[list[tuple]]:
    """Per prototype, the NEAREST training cases of its class nearest to it, nearest first: (distance, case,
    cell, that cell's latent vector, the input patch around it); each case's nearest cell."""
    head = model.head
    found: list[list[tuple]] = [[] for _ in range(len(head.enabled))]
    with torch.no_grad():
        for i in range(len(x)):
            latent = model.latent(x[i:i + 1])
            d = head.similarity.distances(latent)[0]  # (P, X, Y, Z)
            scale = x.shape[2] // latent.shape[2]
            for p in torch.nonzero(head.prototype_class == y[i]).flatten().tolist():
                flat = int(d[p].argmin())
                cell = torch.unravel_index(torch.tensor(flat), d.shape[1:])
                found[p].append((float(d[p].flatten()[flat]), i, [int(c) for c in cell],
                                 latent[0][(slice(None),) + tuple(cell)].clone(), _patch(x[i], cell, scale)))
                found[p] = sorted(found[p], key=lambda entry: entry[0])[:NEAREST]
    return found


@torch.no_grad()
def push(model: PrototypeNet3D, x: torch.Tensor, y: torch.Tensor) -> None:
    """Each prototype onto its nearest latent cell among the training cases of its class, then
    :func:`record_nearest`."""
    for p, entries in enumerate(_nearest_cells(model, x, y)):
        model.head.similarity.prototype_vectors[p] = entries[0][3]
    record_nearest(model, x, y)


@torch.no_grad()
def record_nearest(model: PrototypeNet3D, x: torch.Tensor, y: torch.Tensor) -> None:
    """The ``nearest_*`` buffers: each prototype's NEAREST training cases of its class, measured from the
    prototype as it is (the first is the one it was pushed onto, at distance 0): patches, case indices, cells."""
    head = model.head
    for p, entries in enumerate(_nearest_cells(model, x, y)):
        for rank, (distance, case, cell, _, patch) in enumerate(entries):
            head.nearest_patches[p, rank] = patch.to(head.nearest_patches.dtype)
            head.nearest_sources[p, rank] = torch.tensor([case, *cell])
            head.nearest_distances[p, rank] = distance


def fit_last_layer(model: PrototypeNet3D, x: torch.Tensor, y: torch.Tensor, steps: int = 600) -> None:
    """The linear layer alone on the pushed prototypes' similarities: cross-entropy + L1 on the connections
    to other classes (ProtoPNet's convex last step)."""
    with torch.no_grad():
        pooled = torch.cat([model.head.pooled(model.latent(x[i:i + 8])) for i in range(0, len(x), 8)])
    weight = model.head.last_layer.weight
    other = 1 - F.one_hot(model.head.prototype_class, weight.shape[0]).T.float()
    opt = torch.optim.Adam([weight], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(model.head.last_layer(pooled), y) + L1 * (weight * other).abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(model: PrototypeNet3D, kind: str, n_cases: int, seed: int = EVAL_SEED_START) -> float:
    stream = CaseStream(kind, n_cases, seed)
    hits = [int(model(x[None]).argmax(1)) == y for x, y, _ in map(stream.case, range(n_cases))]
    return sum(hits) / n_cases


def train(kind: str, cases: int, warm: int, joint: int, seed: int, batch: int,
          backbone: Path | None = None) -> PrototypeNet3D:
    torch.manual_seed(seed)
    model = PrototypeNet3D()
    if backbone is not None:
        state = torch.load(backbone / "models" / "model.pt", map_location="cpu", weights_only=True)
        model.features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    print(f"training set: {cases} cases", flush=True)
    x, y = training_set(kind, cases, seed)
    print(f"warm-up: {warm} steps, backbone frozen", flush=True)
    fit(model, x, y, warm, batch, lr=3e-3, backbone_lr=0.0, seed=seed)
    print(f"joint: {joint} steps", flush=True)
    fit(model, x, y, joint, batch, lr=1e-3, backbone_lr=1e-4, seed=seed + 1)
    print("push, then the last layer", flush=True)
    push(model, x, y)
    fit_last_layer(model, x, y)
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(KINDS), default="clean")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", type=int, default=640, help="training cases (held in memory)")
    parser.add_argument("--warm", type=int, default=300, help="warm-up steps (backbone frozen)")
    parser.add_argument("--joint", type=int, default=500, help="steps trained end to end")
    parser.add_argument("--evaluate", type=int, default=200, help="fresh cases to measure accuracy on")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=None, help="where the SynthLesion classifiers (the backbones) are "
                                                       "(default: the shipped ones)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    model = train(args.kind, args.cases, args.warm, args.joint, args.seed, args.batch,
                  Path(args.models or models_dir()) / BACKBONES[args.kind])
    measured = accuracy(model, args.kind, args.evaluate)
    print(f"accuracy on {args.evaluate} fresh {args.kind} cases: {measured:.3f}")
    description = {"clean": "SynthLesion prototype network (lesion vs healthy; ProtoPNet-style, explainable by design)",
                   "shortcut": "SynthLesion prototype network trained with a corner marker on every positive"}
    bundle.write_bundle(args.out, model, "xaiexplain.synthlesion.prototype_model.PrototypeNet3D", {},
                        name=f"synthlesion_prototypes_{args.kind}", description=description[args.kind],
                        class_names=CLASS_NAMES, in_channels=1, preprocessing=DEMO_PREPROCESSING,
                        extra={"training": {
                            "kind": args.kind, "backbone": BACKBONES[args.kind], "cases": args.cases,
                            "warm": args.warm, "joint": args.joint, "seed": args.seed,
                            "batch": args.batch, "costs": {"cluster": CLUSTER, "separation": SEPARATION, "l1": L1},
                            # nearest_sources[p, r] = (case, cell): case of CaseStream(kind, cases, seed)
                            "push_stream": {"kind": args.kind, "cases": args.cases, "seed": args.seed},
                            "accuracy": {"cases": args.evaluate, "seed": EVAL_SEED_START, "value": measured},
                            "seconds": round(time.time() - start), "torch": torch.__version__,
                            **kind_settings(args.kind)}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
