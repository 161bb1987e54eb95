"""The shape of the code: small files, no import cycles, the pyramid's layers, a light top-level import,
and a README layout that names what is on disk."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "XAIExplain"
ENGINE = MODULE_DIR / "xaiexplain"
MAX_LINES = 500


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(MODULE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every engine module ``path`` imports, at the top or inside functions (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = python_files(ENGINE)
    known = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, known) for p in files}


def test_no_file_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in python_files(MODULE_DIR) + python_files(ROOT / "Testing")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these files: {long}"


def test_engine_modules_import_no_cycle(graph):
    # a module importing its own package's __init__ (which re-exports it) is the package's business, not a cycle
    def edges(module):
        return {t for t in graph[module] if not module.startswith(t + ".")}

    state: dict[str, int] = {}
    cycles = []

    def visit(module, path):
        state[module] = 1
        for target in sorted(edges(module)):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_the_engine_never_imports_slicer_or_qt_and_the_lib_never_imports_qt():
    def imports(path):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
        return names

    for path in python_files(ENGINE):
        assert not imports(path) & {"slicer", "qt", "ctk", "vtk", "XAIExplainLib"}, path
    for path in python_files(MODULE_DIR / "XAIExplainLib"):
        assert not imports(path) & {"qt", "ctk"}, path


def test_lower_layers_do_not_import_higher_ones(graph):
    """core, io and regions know nothing of the front ends; methods and metrics nothing of the CLI or SynthLesion."""
    rules = {"xaiexplain.core.volume": ("methods", "metrics", "cli", "synthlesion", "io"),
             "xaiexplain.methods": ("metrics", "cli", "synthlesion", "io"),
             "xaiexplain.metrics": ("cli", "synthlesion"),
             "xaiexplain.regions": ("methods", "metrics", "cli", "synthlesion"),
             "xaiexplain.io": ("methods", "metrics", "cli", "synthlesion"),
             "xaiexplain.protocol": ("core", "methods", "metrics", "cli", "synthlesion", "io", "regions")}
    for module, targets in graph.items():
        for prefix, forbidden in rules.items():
            if module == prefix or module.startswith(prefix + "."):
                bad = {t for t in targets if any(t.startswith(f"xaiexplain.{f}") for f in forbidden)}
                assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("code", [
    "import xaiexplain; xaiexplain.XAIError; xaiexplain.__version__",
    "import xaiexplain.protocol",
    "import sys; sys.argv = ['xaiexplain', '--help']\nfrom xaiexplain.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
    "import sys; sys.argv = ['xaiexplain', '--version']\nfrom xaiexplain.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
])
def test_the_top_level_import_help_and_version_do_not_load_torch(code):
    check = code + "\nimport sys\nassert 'torch' not in sys.modules and 'monai' not in sys.modules, 'torch was imported'"
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-500:]


def test_lazy_names_resolve_to_the_engine_objects():
    import xaiexplain
    from xaiexplain.core.explain import explain
    from xaiexplain.methods import REGISTRY

    assert xaiexplain.explain is explain and xaiexplain.METHODS is REGISTRY
    for name in xaiexplain.__all__:
        assert getattr(xaiexplain, name) is not None, name
    with pytest.raises(AttributeError):
        xaiexplain.no_such_name  # noqa: B018


def test_readme_layout_names_every_engine_module_and_nothing_else():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Layout\n```\n(.*?)```", text, re.S).group(1)
    words = set(re.findall(r"[A-Za-z_][\w]*", block))
    on_disk = {p.stem for p in python_files(ENGINE) if p.stem not in ("__init__", "__main__")}
    packages = {p.parent.name for p in python_files(ENGINE) if p.name == "__init__.py"}
    missing = sorted((on_disk | packages) - words)
    assert not missing, f"the README's layout section does not name: {missing}"
    engine_part = block[block.index("xaiexplain/"):block.index("Resources/Models/")]
    named = set(re.findall(r"\b(\w+)\.py\b", engine_part)) | set(re.findall(r"\b(\w+)/", engine_part))
    stale = sorted(named - on_disk - packages - {"xaiexplain"})
    assert not stale, f"the README's layout section names what is not on disk: {stale}"
