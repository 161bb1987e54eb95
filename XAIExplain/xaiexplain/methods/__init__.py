"""The method registry. Importing this package registers every method."""
from . import gradients, backprop, cam, lrp, deeplift, occlusion, sampling  # noqa: F401,I001  (registration order = listing order)
from .base import ALIASES, REGISTRY, Cancelled, Context, Method, get_method

__all__ = ["ALIASES", "REGISTRY", "Cancelled", "Context", "Method", "get_method"]
