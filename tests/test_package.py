"""The package as pip installs it (pyproject.toml, uniformface/__init__.py): the public names, a wheel built
offline from this tree with every subpackage and console command, the installed editable copy, and
dependency ranges that hold the exact pins of requirements.txt."""
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from uniformface.base.cli import command_name
from uniformface.commands import INSTALLED

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ["build_model", "build_head", "uniform_loss", "ClassCenters", "load_config", "Trainer",
          "ASoftmax", "CosFace", "ArcFace", "kfold_accuracy", "open_train_set", "read_splits"]


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def expected_scripts():
    return {command_name(name): f"uniformface.commands.{name}:main" for name in INSTALLED}


def test_the_public_names_are_the_library_objects():
    import uniformface
    from uniformface import ClassCenters, Trainer, build_head, build_model, load_config, uniform_loss
    from uniformface.nn.centers import ClassCenters as centers_class
    from uniformface.base.config import load_config as config_loader
    from uniformface.nn.heads import build_head as head_builder
    from uniformface.nn.losses import uniform_loss as loss
    from uniformface.nn.models import build_model as model_builder
    from uniformface.train.trainer import Trainer as trainer_class

    assert uniformface.__all__ == PUBLIC and set(PUBLIC) <= set(dir(uniformface))
    assert (build_model, build_head, uniform_loss, ClassCenters, load_config, Trainer) == \
        (model_builder, head_builder, loss, centers_class, config_loader, trainer_class)
    with pytest.raises(AttributeError, match="no attribute 'build_modle'"):
        uniformface.build_modle


def test_the_names_outside_checks_import_from_the_package_top():
    """The public names that outside checks import (heads, the k-fold protocol, the training-set opener, the
    YouTube Faces reader) import from the package top, whichever module holds them."""
    from uniformface import ArcFace, ASoftmax, CosFace, kfold_accuracy, open_train_set, read_splits
    from uniformface.data import open_train_set as opener
    from uniformface.eval.protocols import kfold_accuracy as kfold
    from uniformface.eval.ytf import read_splits as splits_reader
    from uniformface.nn.heads import ArcFace as arcface, ASoftmax as asoftmax, CosFace as cosface

    assert (ASoftmax, CosFace, ArcFace, kfold_accuracy, open_train_set, read_splits) == \
        (asoftmax, cosface, arcface, kfold, opener, splits_reader)


def test_importing_the_package_or_its_config_imports_no_torch():
    probe = ("import json, sys; import uniformface, uniformface.base.config, uniformface.base.registry, "
             "uniformface.base.cli; "
             "before = 'torch' in sys.modules; uniformface.build_model; "
             "print(json.dumps([before, 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "code")})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [False, True]  # torch arrives with the first name that needs it


def test_a_wheel_builds_offline_from_the_tree_with_every_subpackage_and_command(tmp_path):
    """`pip install .`: the wheel pip builds from this tree with the environment's setuptools and no index."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "code", source / "code", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("uniformface-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = archive.read(f"{info}/METADATA").decode()
    packages = {p.parent.relative_to(ROOT / "code").as_posix()
                for p in (ROOT / "code" / "uniformface").rglob("__init__.py")}
    assert {"uniformface", "uniformface/commands", "uniformface/data"} <= packages
    for package in packages:
        modules = {p.relative_to(ROOT / "code").as_posix() for p in (ROOT / "code" / package).glob("*.py")}
        assert modules <= names, (package, modules - names)
    assert not {n for n in names if not n.startswith(("uniformface/", info))}, "only the package goes in the wheel"
    section = entry_points.split("[console_scripts]")[1].split("\n[")[0]
    scripts = dict(line.replace(" ", "").split("=", 1) for line in section.splitlines() if "=" in line)
    assert scripts == expected_scripts()
    version = importlib.import_module("uniformface").__version__
    assert f"Version: {version}\n" in metadata
    assert "Provides-Extra: export" in metadata and "Provides-Extra: dev" in metadata


def test_the_console_commands_are_the_scripts_mains():
    assert pyproject()["project"]["scripts"] == expected_scripts()
    for target in expected_scripts().values():
        module, function = target.split(":")
        main = getattr(importlib.import_module(module), function)
        assert callable(main) and main.__module__ == module


def test_the_installed_package_is_this_tree():
    """`make` installs the package editable into .venv: its console commands and its code are this tree's."""
    try:
        distribution = importlib.metadata.distribution("uniformface")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the package is not installed in this environment (`make` installs it; the Docker image "
                    "runs the scripts from PYTHONPATH)")
    scripts = {ep.name: ep.value for ep in distribution.entry_points if ep.group == "console_scripts"}
    assert scripts == expected_scripts(), "reinstall: pip install --no-build-isolation --no-deps -e ."
    for ep in distribution.entry_points:
        assert callable(ep.load()), ep
    assert Path(importlib.import_module("uniformface").__file__).resolve().parent == ROOT / "code" / "uniformface"
    assert distribution.version == importlib.import_module("uniformface").__version__


def test_the_dependency_ranges_hold_the_pins_and_every_pin_is_a_dependency():
    packaging = pytest.importorskip("packaging.requirements")
    project = pyproject()["project"]
    ranges = [packaging.Requirement(text) for text in project["dependencies"]]
    extras = project["optional-dependencies"]
    ranges += [packaging.Requirement(text) for group in extras.values() for text in group
               if not text.startswith("uniformface")]
    assert extras["export"] and {"onnx", "onnxruntime"} == {packaging.Requirement(t).name for t in extras["export"]}
    assert "pytest" in {packaging.Requirement(t).name for t in extras["dev"] if not t.startswith("uniformface")}

    def key(name):
        return name.lower().replace("_", "-")

    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not an exact pin"
            pins[key(name)] = version
    build_tools = {"setuptools"}  # pinned for the build of the package itself, not a runtime dependency
    assert {key(r.name) for r in ranges} == set(pins) - build_tools
    for requirement in ranges:
        assert requirement.specifier, f"{requirement.name}: give a version range"
        pin = pins[key(requirement.name)]
        assert requirement.specifier.contains(pin), (str(requirement), pin)
    build = pyproject()["build-system"]["requires"]
    assert any(packaging.Requirement(t).specifier.contains(pins["setuptools"])
               for t in build if t.startswith("setuptools"))


# The package's layers, bottom-up (the README's "Code layout" draws the same picture): a module imports only
# from its own subpackage or from one in a layer below; `train` and `align` share a layer and import
# nothing of each other; the bottom layer imports no torch at module level (`distributed` is torch's own).
LAYERS = {
    0: {"base"},
    1: {"nn", "data"},
    2: {"train", "align"},
    3: {"eval"},
    4: {"tools"},
    5: {"commands"},
    6: {"__init__"},
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}
TORCH_AT_IMPORT = {"base/distributed.py"}  # torch.distributed's helpers: torch is what they are about
PACKAGE = ROOT / "code" / "uniformface"
MAX_TOP_MODULES = 12


def _top_name(path: Path) -> str:
    """The subpackage a file is in ("train" for train/trainer.py; "__init__" for the package's own)."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path, depth: int | None = None):
    """(imported subpackage, line, at module level?) for every import of the package in a file, relative
    (`from .x import`, `from ..x.y import`, `from .. import x`) or absolute (`uniformface.x.y`); imports
    within the file's own subpackage are left out."""
    import ast
    tree = ast.parse(path.read_text(), filename=str(path))
    if depth is None:  # 0 for uniformface/x.py, 1 for uniformface/sub/x.py
        depth = len(path.relative_to(PACKAGE).parts) - 1
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 < depth:  # inside the same subpackage
                    continue
                base = node.module.split(".")[0] if node.module else None
                names = [base] if base else [alias.name for alias in node.names]
            elif node.module and node.module.split(".")[0] == "uniformface":
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("uniformface.")]
        for name in names:
            yield name, node.lineno, id(node) in top_level


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_is_in_a_layered_subpackage():
    unplaced = sorted({_top_name(p) for p in _modules()} - set(LAYER_OF))
    assert not unplaced, f"place these in a layer (LAYERS here, and the README's picture): {unplaced}"
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_no_module_imports_from_a_layer_above_its_own_or_across_train_and_align():
    wrong = []
    for path in _modules():
        own = _top_name(path)
        for name, line, _ in _imports(path):
            if name not in LAYER_OF or own not in LAYER_OF or name == own:
                continue
            if LAYER_OF[name] >= LAYER_OF[own] and own != "__init__":
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({own}, layer {LAYER_OF[own]}) imports {name} "
                             f"(layer {LAYER_OF[name]})")
    assert not wrong, "\n".join(wrong)


def test_the_bottom_layer_imports_no_torch_at_module_level():
    import ast
    heavy = []
    for path in _modules():
        if LAYER_OF.get(_top_name(path)) != 0 or path.relative_to(PACKAGE).as_posix() in TORCH_AT_IMPORT:
            continue
        for node in ast.parse(path.read_text()).body:
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            heavy += [f"{path.name}:{node.lineno} {m}" for m in modules if m.split(".")[0] in ("torch", "torchvision")]
    assert not heavy, heavy


def test_the_layer_checks_can_fail(tmp_path):
    """The import scan sees an import from above (at module level and inside a function), relative and
    absolute, and an import within a subpackage is not mistaken for one of another."""
    probe = tmp_path / "nn" / "losses.py"
    probe.parent.mkdir()
    probe.write_text("import torch\nfrom ..train.trainer import Trainer\n\n"
                     "def f():\n    import uniformface.tools.ablation\n")
    assert [(name, top) for name, _, top in _imports(probe, depth=1)] == [("train", True), ("tools", False)]
    assert LAYER_OF["train"] > LAYER_OF["nn"] and LAYER_OF["tools"] > LAYER_OF["nn"]
    assert LAYER_OF["train"] == LAYER_OF["align"]  # side by side: an import either way is refused
    inside = tmp_path / "packed.py"
    inside.write_text("from .trainset import TrainSet\nfrom ..base.images import read_rgb\n")
    assert [name for name, _, _ in _imports(inside, depth=1)] == ["base"]
