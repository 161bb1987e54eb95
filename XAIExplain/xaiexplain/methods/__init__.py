"""The method registry. Importing this package registers every method."""
from . import (backprop, cam, deeplift, gradients, lrp,  # noqa: F401,I001  (registration order = listing order)
               occlusion, sampling, channels, uncertainty, features, attention, prototypes)
from .base import ALIASES, REGISTRY, Cancelled, Context, Method, get_method

__all__ = ["ALIASES", "REGISTRY", "Cancelled", "Context", "Method", "get_method"]
