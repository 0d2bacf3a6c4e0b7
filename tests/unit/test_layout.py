"""The product's layout as a contract: one import namespace, layers that only point down, thin flows."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("dashboard", "flows", "infra", "model_registry", "monitoring", "tasks")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))
MAX_FLOW_FUNCTION_LINES = 45


def package_folders() -> set[str]:
    """Every folder of the product holding an ``__init__.py``, as its installed name (steelqc.tasks.data, ...)."""
    found = set()
    for top in PRODUCT:
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            if "__pycache__" not in parts:
                found.add("steelqc." + ".".join(parts))
    return found


def test_every_package_folder_is_installed_under_steelqc() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == package_folders()
    assert setuptools["package-dir"] == {f"steelqc.{top}": top for top in PRODUCT}


def product_copy(dest: Path) -> Path:
    """The files a wheel or the import linter needs, copied (the working tree is never written to)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for top in PRODUCT:
        shutil.copytree(ROOT / top, dest / top, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    source = product_copy(tmp_path / "src")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "w"),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "w").glob("steelqc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"steelqc"}
    assert "steelqc/tasks/rle.py" in names and "steelqc/tasks/data/rle.py" in names
    assert "steelqc/flows/cli.py" in names and not any(n.startswith("steelqc/__init__") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "steelqc = steelqc.flows.cli:run" in zipfile.ZipFile(wheel).read(entry_points).decode()


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over a copy of the product laid out as the installed namespace."""
    namespace = tree / "site" / "steelqc"
    namespace.mkdir(parents=True)
    for top in PRODUCT:
        shutil.copytree(tree / top, namespace / top)
    env = {**os.environ, "PYTHONPATH": str(tree / "site")}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(tree / "pyproject.toml")],
        capture_output=True, text=True, cwd=tree, env=env, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("module", "upward", "contract"),
    [
        ("tasks/data/split.py", "from steelqc.model_registry import gates", "Layers"),
        ("model_registry/gates.py", "from steelqc.flows import alerts", "Layers"),
        ("tasks/model/inference.py", "from steelqc.tasks.model import train", "never import training"),
        ("tasks/config.py", "from steelqc.infra import services", "infra"),
    ],
)
def test_an_upward_import_breaks_the_layer_contract(tmp_path: Path, module: str, upward: str, contract: str) -> None:
    tree = product_copy(tmp_path / "tree")
    target = tree / module
    target.write_text(target.read_text() + f"\n{upward}  # an upward import\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0, proc.stdout[-3000:]
    broken = proc.stdout[proc.stdout.index("Broken contracts") :]
    assert contract in broken and upward.split()[1] in broken


@pytest.mark.slow
def test_the_untouched_copy_keeps_every_contract(tmp_path: Path) -> None:
    proc = lint_imports(product_copy(tmp_path / "tree"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


def flow_functions() -> list[tuple[str, str, int]]:
    """(file, function, lines including the signature and decorators) for every function in flows/."""
    found = []
    for path in sorted((ROOT / "flows").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                found.append((path.name, node.name, node.end_lineno - first + 1))
    return found


def test_flows_are_thin_wiring() -> None:
    long = [
        f"{file}:{name} ({lines} lines)" for file, name, lines in flow_functions() if lines > MAX_FLOW_FUNCTION_LINES
    ]
    assert not long, f"functions in flows/ over {MAX_FLOW_FUNCTION_LINES} lines: {long}"
