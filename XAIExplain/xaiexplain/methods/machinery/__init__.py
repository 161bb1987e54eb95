"""What the method families are built on: relevance propagation through every call (TorchFunctionMode),
the inference copy and incremental scoring for perturbations, BatchNorm folding, and perturbation helpers."""
