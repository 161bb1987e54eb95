"""Python dependencies inside Slicer: checked on first use, installed only after the user agrees.

torch comes from Slicer's PyTorch extension. numpy, SimpleITK and vtk are Slicer's
own builds: they are never installed, upgraded or downgraded (a constraints file
pins them at the installed versions while pip resolves the rest). Nothing here
runs at import time.
"""
from __future__ import annotations

import importlib.metadata
import re
import tempfile
from pathlib import Path

SLICER_OWNED = ("numpy", "SimpleITK", "vtk")  # bundled with Slicer: pinned, never installed
FROM_EXTENSION = ("torch",)  # from the PyTorch extension
REQUESTER = "XAIExplain"


def requirementsPath() -> Path:
    return Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"


def readRequirements(path=None) -> list[str]:
    lines = Path(path or requirementsPath()).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def requirementName(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"cannot read requirement '{requirement}'")
    return match.group(1)


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _versionKey(text: str):
    try:
        from packaging.version import Version

        return Version(text)
    except Exception:  # noqa: BLE001 (packaging missing or an odd version string: compare numerically)
        return tuple(int(p) for p in re.findall(r"\d+", text)[:4])


def isSatisfied(requirement: str, version=importlib.metadata.version) -> bool:
    """Installed, and at least the ``>=`` lower bound if there is one."""
    try:
        installed = version(requirementName(requirement))
    except importlib.metadata.PackageNotFoundError:
        return False
    bound = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", requirement)
    return bound is None or _versionKey(installed) >= _versionKey(bound.group(1))


def missingRequirements(requirements=None, version=importlib.metadata.version) -> list[str]:
    requirements = readRequirements() if requirements is None else list(requirements)
    return [r for r in requirements if not isSatisfied(r, version)]


def constraintsText(version=importlib.metadata.version) -> str:
    """``name==version`` for Slicer's own packages that are installed, so pip leaves them as they are."""
    lines = []
    for name in SLICER_OWNED:
        try:
            lines.append(f"{name}=={version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return "\n".join(lines) + "\n"


def checkNotSlicerOwned(requirements) -> None:
    owned = {_normalized(n) for n in SLICER_OWNED + FROM_EXTENSION}
    bad = [r for r in requirements if _normalized(requirementName(r)) in owned]
    if bad:
        raise ValueError(f"{', '.join(bad)} must not be installed by XAIExplain (Slicer or the PyTorch extension "
                         "provides it)")


def installRequirements(requirements, slicerModule, *, confirm=None, version=importlib.metadata.version) -> bool:
    """Install ``requirements`` into Slicer's Python. Returns True when they are satisfied afterwards.

    Slicer >= 5.12: ``slicer.packaging.pip_ensure`` (it asks the user and shows progress itself).
    Before: ``confirm(message)`` must return True, then ``slicer.util.pip_install``.
    """
    requirements = list(requirements)
    if not requirements:
        return True
    checkNotSlicerOwned(requirements)
    with tempfile.TemporaryDirectory(prefix="xaiexplain-pip-") as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text(constraintsText(version), encoding="utf-8")
        packaging = getattr(slicerModule, "packaging", None) or getattr(slicerModule, "pydeps", None)
        ensure = getattr(packaging, "pip_ensure", None)
        if ensure is not None:
            result = ensure(requirements, constraints=str(constraints), requester=REQUESTER)
            return bool(result) if result is not None else not missingRequirements(requirements, version)
        message = ("XAIExplain needs these Python packages, which are not installed yet:\n\n  "
                   + "\n  ".join(requirements) + "\n\nInstall them now? (this can take a few minutes)")
        if confirm is None or not confirm(message):
            return False
        quoted = " ".join(f'"{r}"' for r in requirements)
        slicerModule.util.pip_install(f'{quoted} -c "{constraints}"')
    return True


def ensureTorch(askConfirmation: bool = True) -> bool:
    """PyTorch through the PyTorch extension's helper (it picks the CPU or CUDA build for this computer)."""
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError("XAIExplain needs the PyTorch extension: install it from the Extensions Manager") from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.torchInstalled():
        return True
    return torchLogic.installTorch(askConfirmation) is not None
