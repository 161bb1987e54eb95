"""Software versions and file checksums recorded with every result, so a map can be reproduced."""
from __future__ import annotations

import hashlib
import platform
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path


def file_sha256(path) -> str:
    """sha256 of a file, or of a folder's files (their names and contents, in sorted order: a MONAI bundle, a
    DICOM series)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def versions() -> dict:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("xaiexplain", "torch", "monai", "numpy", "SimpleITK", "scipy", "captum", "scikit-image"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found
