"""The ``xaiexplain`` command (``main``, imported on first use so that ``cli.start`` runs first)."""

__all__ = ["main"]


def __getattr__(name: str):
    if name != "main":
        raise AttributeError(f"module 'xaiexplain.cli' has no attribute {name!r}")
    from .main import main as command
    globals()["main"] = command  # the function, not the submodule of the same name the import just set
    return command
