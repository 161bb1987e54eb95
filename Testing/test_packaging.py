"""The Slicer extension packaging: the module's CMakeLists lists exactly the engine's files, and the resources exist."""
from __future__ import annotations

import ast
import re
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "XAIExplain"
MODELS_DIR = ROOT / "Resources" / "Models"
BUNDLES = ("synthlesion_classifier", "synthlesion_shortcut", "synthlesion_prototypes",
           "synthlesion_prototypes_shortcut")
BUNDLE_FILES = ("configs/metadata.json", "configs/inference.json", "models/model.pt")


def strip_comment(line: str) -> str:
    """The line without its ``#`` comment; a ``#`` inside a quoted argument (a URL's anchor) is kept."""
    quoted = False
    for i, char in enumerate(line):
        if char == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:i]
    return line


def cmake_text(path: Path) -> str:
    return "\n".join(strip_comment(line) for line in path.read_text(encoding="utf-8").splitlines())


def cmake_set(text: str, name: str) -> list[str]:
    """The items of ``set(name item item ...)``, with ${MODULE_NAME} expanded."""
    match = re.search(rf"\bset\(\s*{name}\b([^)]*)\)", text)
    assert match, f"no set({name} ...) in the CMakeLists"
    module_name = re.search(r"\bset\(\s*MODULE_NAME\s+(\S+?)\s*\)", text)
    items = match.group(1).split()
    if module_name:
        items = [item.replace("${MODULE_NAME}", module_name.group(1)) for item in items]
    return items


@pytest.fixture(scope="module")
def module_cmake() -> str:
    return cmake_text(MODULE_DIR / "CMakeLists.txt")


@pytest.fixture(scope="module")
def top_cmake() -> str:
    return cmake_text(ROOT / "CMakeLists.txt")


def test_scripts_listed_are_the_py_files_on_disk(module_cmake):
    listed = cmake_set(module_cmake, "MODULE_PYTHON_SCRIPTS")
    assert len(listed) == len(set(listed)), "a script is listed twice"
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert "XAIExplain.py" in on_disk and "xaiexplain/methods/__init__.py" in on_disk
    missing = sorted(on_disk - set(listed))
    stale = sorted(set(listed) - on_disk)
    assert not missing, f"add to MODULE_PYTHON_SCRIPTS in XAIExplain/CMakeLists.txt: {missing}"
    assert not stale, f"listed in MODULE_PYTHON_SCRIPTS but not on disk: {stale}"


def test_resources_listed_exist(module_cmake):
    listed = cmake_set(module_cmake, "MODULE_PYTHON_RESOURCES")
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    module_resources = [item for item in listed if not item.startswith("../")]
    bundle_resources = [item for item in listed if item.startswith("../")]

    # every file under XAIExplain/Resources is shipped, and nothing else from there
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert "Resources/Icons/XAIExplain.png" in on_disk
    assert set(module_resources) == on_disk

    # the demo bundles: every file of both, by a path relative to the module folder
    expected = {f"../Resources/Models/{bundle}/{file}" for bundle in BUNDLES for file in BUNDLE_FILES}
    assert set(bundle_resources) == expected
    if not MODELS_DIR.is_dir() or not any(MODELS_DIR.iterdir()):
        pytest.skip("Resources/Models holds no demo bundle yet (trained by xaiexplain.synthlesion.train)")
    absent = [item for item in bundle_resources if not (MODULE_DIR / item).is_file()]
    assert not absent, f"listed demo-bundle files missing on disk: {absent}"


def test_module_cmake_follows_slicer_template(module_cmake):
    assert re.search(r"\bset\(\s*MODULE_NAME\s+XAIExplain\s*\)", module_cmake)
    call = re.search(r"slicerMacroBuildScriptedModule\(([^)]*)\)", module_cmake)
    assert call, "no slicerMacroBuildScriptedModule(...)"
    args = call.group(1).split()
    assert args[:2] == ["NAME", "${MODULE_NAME}"]
    assert "SCRIPTS" in args and args[args.index("SCRIPTS") + 1] == "${MODULE_PYTHON_SCRIPTS}"
    assert "RESOURCES" in args and args[args.index("RESOURCES") + 1] == "${MODULE_PYTHON_RESOURCES}"
    testing = re.search(r"if\(\s*BUILD_TESTING\s*\)(.*?)endif\(", module_cmake, re.S)
    assert testing and re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)",
                                 testing.group(1))


def test_top_level_cmake(top_cmake):
    assert re.search(r"cmake_minimum_required\(\s*VERSION\s+3\.16\.3\.\.\.3\.19\.7\s+FATAL_ERROR\s*\)", top_cmake)
    assert re.search(r"^\s*project\(\s*XAIExplain\s*\)", top_cmake, re.M)
    assert re.search(r"set\(\s*EXTENSION_DEPENDS\s+\"?PyTorch\"?\s*\)", top_cmake)
    assert re.search(r"set\(\s*EXTENSION_CATEGORY\s+\"Quantification\"\s*\)", top_cmake)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf"set\(\s*{var}\s+\"[^\"]+\"\s*\)", top_cmake), f"{var} not set"
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(XAIExplain)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [top_cmake.find(statement) for statement in order]
    assert -1 not in positions, dict(zip(order, positions))
    assert positions == sorted(positions)


def test_pyproject_declares_the_cli():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "xaiexplain" in project["scripts"]
    module, _, function = project["scripts"]["xaiexplain"].partition(":")
    source = MODULE_DIR / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"entry point module {module} not found"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


MODULE_CLASSES = {"XAIExplain": "ScriptedLoadableModule", "XAIExplainParameterNode": None,
                  "XAIExplainWidget": "ScriptedLoadableModuleWidget", "XAIExplainLogic": "ScriptedLoadableModuleLogic",
                  "XAIExplainTest": "ScriptedLoadableModuleTest"}


def top_level_imports(tree) -> set[str]:
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    return imported


def all_imports(tree) -> set[str]:
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add((node.module or "").split(".")[0])
    return imported


def test_module_script_is_thin():
    source = (MODULE_DIR / "XAIExplain.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    # the engine (torch) is never imported when Slicer loads the module: it may not be installed yet
    assert top_level_imports(tree) <= {"logging", "typing", "qt", "ctk", "vtk", "slicer", "XAIExplainLib",
                                       "XAIExplainGui"}
    assert not {"xaiexplain", "torch", "monai", "numpy"} & all_imports(tree)  # not even lazily: the logic does it
    assert len(source.splitlines()) < 500, "keep the module file thin: put logic in XAIExplainLib"
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert list(classes) == list(MODULE_CLASSES)
    for name, base in MODULE_CLASSES.items():
        bases = [ast.unparse(b) for b in classes[name].bases]
        assert base is None or bases[0] == base, (name, bases)
    assert [ast.unparse(d) for d in classes["XAIExplainParameterNode"].decorator_list] == ["parameterNodeWrapper"]
    assert "ExplainLogicBase" in [ast.unparse(b) for b in classes["XAIExplainLogic"].bases]
    assigned = {}
    for node in ast.walk(classes["XAIExplain"]):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            try:
                assigned[node.targets[0].attr] = ast.literal_eval(node.value)
            except ValueError:
                pass
    assert assigned["title"] == "XAIExplain"
    assert assigned["categories"] == ["Quantification"]
    help_text = assigned["helpText"].lower()
    for word in ("gradient", "cam", "backprop", "xaiexplain", "simonyan", "selvaraju", "sundararajan"):
        assert word in help_text
    assert assigned["acknowledgementText"].strip()
    # Slicer's template conventions: camelCase methods on the module's classes
    for cls in classes.values():
        for node in cls.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("__"):
                assert "_" not in node.name.lstrip("_") or node.name.startswith("test_"), node.name


def test_slicer_helpers_never_import_qt_or_the_engine_at_import_time():
    for path in sorted((MODULE_DIR / "XAIExplainLib").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not {"qt", "ctk", "PythonQt"} & all_imports(tree), f"{path.name} imports Qt"
        assert not {"xaiexplain", "torch", "monai"} & top_level_imports(tree), f"{path.name} imports the engine"
    for path in sorted((MODULE_DIR / "XAIExplainGui").glob("*.py")):  # the Qt parts: no engine either
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not {"xaiexplain", "torch", "monai", "numpy"} & all_imports(tree), f"{path.name} imports the engine"


def ui_tree():
    import xml.etree.ElementTree as ET

    return ET.parse(MODULE_DIR / "Resources" / "UI" / "XAIExplain.ui").getroot()


def test_every_ui_name_used_in_code_exists_in_the_ui_file():
    root = ui_tree()
    names = {w.get("name") for w in root.iter("widget")}
    source = (MODULE_DIR / "XAIExplain.py").read_text(encoding="utf-8")
    used = set(re.findall(r"\bui\.([A-Za-z_]\w*)", source))
    assert used, "the widget uses no ui.<name>?"
    assert not used - names, f"not in Resources/UI/XAIExplain.ui: {sorted(used - names)}"


def test_ui_parameter_names_are_parameter_node_fields():
    tree = ast.parse((MODULE_DIR / "XAIExplain.py").read_text(encoding="utf-8"))
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "XAIExplainParameterNode")
    fields = {n.target.id for n in node_class.body if isinstance(n, ast.AnnAssign)}
    bound = set()
    for widget in ui_tree().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound.add(prop.find("string").text)
    assert bound and not bound - fields, f"bound in the .ui but not parameter-node fields: {sorted(bound - fields)}"


def test_ui_widget_classes_are_declared():
    root = ui_tree()
    assert root.find("widget").get("class") == "qMRMLWidget"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, f"declare in <customwidgets>: {sorted(custom - declared)}"


def test_extension_index_entry_is_valid():
    import json

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "Testing" / "data" / "slicer-extension-catalog-entry-schema-v1.0.2.json").read_text())
    entry = json.loads((ROOT / "XAIExplain.json").read_text(encoding="utf-8"))
    jsonschema.validate(entry, schema)
    assert entry["$schema"] == schema["$id"]
    top = cmake_text(ROOT / "CMakeLists.txt")
    category = re.search(r'set\(\s*EXTENSION_CATEGORY\s+"([^"]+)"', top).group(1)
    depends = re.search(r'set\(\s*EXTENSION_DEPENDS\s+"?([^")]+)"?', top).group(1).split()
    homepage = re.search(r'set\(\s*EXTENSION_HOMEPAGE\s+"([^"#]+)', top).group(1)
    assert entry["category"] == category and entry["build_dependencies"] == depends
    assert entry["scm_url"].removesuffix(".git") == homepage.removesuffix("/")


def test_screenshots_named_by_the_extension_exist():
    top = cmake_text(ROOT / "CMakeLists.txt")
    urls = re.search(r'set\(\s*EXTENSION_SCREENSHOTURLS\s+"([^"]+)"', top).group(1).split()
    for url in urls:
        path = ROOT / url.split("/main/", 1)[1]
        assert path.is_file(), f"{url} -> {path} missing"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Screenshots/1.png" in readme


def test_icon_is_a_128_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "XAIExplain.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(text.splitlines()) > 150
