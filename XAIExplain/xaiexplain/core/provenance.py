"""Software versions recorded with every result, so a map can be reproduced."""
from __future__ import annotations

import platform
import sys
from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=1)
def versions() -> dict:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("xaiexplain", "torch", "monai", "numpy", "SimpleITK", "scipy", "captum", "scikit-image"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found
