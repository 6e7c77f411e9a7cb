"""Packaging: ``pip install .`` gives a working frontend and launcher.

pyproject.toml declares what each part imports (the runtime as dependencies, SGLang, tests and benchmarks as
extras), and the wheel carries the packages and the model repository the launcher renders.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from diffusion_runtime.launcher.repository import PROJECT_ROOT, REPOSITORY

tomllib = pytest.importorskip("tomllib")

OWN_PACKAGES = {"diffusion_runtime", "openai_frontend", "tests", "scripts", "benchmarks"}
PROVIDED_BY_TRITON = {"triton_python_backend_utils"}  # the Python backend gives it to every model


def _distribution_name(requirement: str) -> str:
    """``uvicorn[standard]>=0.30; sys_platform == 'linux'`` -> ``uvicorn`` (normalised as PEP 503 does)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())[0]  # type: ignore[index]
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*extras: str) -> set[str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return {_distribution_name(r) for r in requirements}


def _imported_top_level_modules(*folders: str) -> dict[str, str]:
    """Top-level modules imported by the Python files under ``folders`` -> one file that imports each."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.partition(".")[0], str(path.relative_to(PROJECT_ROOT)))
    return {m: f for m, f in found.items() if m not in sys.stdlib_module_names and m not in OWN_PACKAGES}


@pytest.mark.parametrize(
    ("folders", "extras"),
    [
        (("diffusion_runtime", "openai_frontend", "model_repository"), ("sglang",)),
        (("tests",), ("sglang", "test")),
        (("benchmarks", "scripts"), ("sglang", "bench")),
    ],
)
def test_every_imported_package_is_declared(folders: tuple[str, ...], extras: tuple[str, ...]) -> None:
    """Each third-party module imported is provided by a distribution pyproject.toml names (for the runtime: a
    dependency, or the sglang extra for the SGLang engines)."""
    declared = _declared(*extras)
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module, where in _imported_top_level_modules(*folders).items():
        if module in PROVIDED_BY_TRITON:
            continue
        names = {_distribution_name(d) for d in providers.get(module, [])}
        if not names & declared:
            missing[module] = (where, sorted(names))
    assert missing == {}


def test_sglang_is_only_an_extra() -> None:
    """The frontend and the portable engines work without SGLang, so a plain ``pip install .`` leaves it out."""
    assert "sglang" not in _declared()
    assert "sglang" in _declared("sglang")


def _copy_of_the_project(destination: Path) -> Path:
    """What a source checkout holds, without version control, caches or build leftovers."""
    ignore = shutil.ignore_patterns(".*", "__pycache__", "build", "dist", "*.egg-info", "results", "tests")
    return Path(shutil.copytree(PROJECT_ROOT, destination, ignore=ignore))


@pytest.mark.e2e  # runs pip to build the wheel, and the installed launcher
def test_wheel_holds_the_packages_and_the_model_repository_and_its_launcher_serves_from_them(tmp_path: Path) -> None:
    source = _copy_of_the_project(tmp_path / "source")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")]
        + [str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("triton_diffusion-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    packages = [
        p.parent for top in ("diffusion_runtime", "openai_frontend") for p in (source / top).rglob("__init__.py")
    ]
    for package in packages:
        assert f"{package.relative_to(source).as_posix()}/__init__.py" in names
    models = [p for p in (source / "model_repository").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert models
    for model_file in models:
        assert f"diffusion_runtime/{model_file.relative_to(source).as_posix()}" in names
    page = [p.relative_to(source).as_posix() for p in (source / "openai_frontend" / "playground").iterdir()]
    assert page and set(page) <= names  # the playground's static files
    assert not any(name.startswith(("tests/", "scripts/", "benchmarks/", "model_repository/")) for name in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "triton-diffusion-serve = diffusion_runtime.launcher.cli:main" in scripts
    assert "triton-diffusion-frontend = openai_frontend.main:main" in scripts

    # Installed away from any checkout, the launcher finds the repository inside the package and renders it.
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    check = (
        "import sys; from pathlib import Path\n"
        "from diffusion_runtime.launcher.repository import REPOSITORY, ModelSpec, render_repository\n"
        "assert REPOSITORY == Path(sys.argv[1]) / 'diffusion_runtime' / 'model_repository', REPOSITORY\n"
        "out = render_repository([ModelSpec('image_diffusion')], Path(sys.argv[2]), gpus=[])\n"
        "print(sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file()))\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(site)}
    rendered = subprocess.run(
        [sys.executable, "-c", check, str(site), str(tmp_path / "rendered")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.strip() == str(["image_diffusion/1/model.py", "image_diffusion/config.pbtxt"])
    helped = subprocess.run(
        [sys.executable, "-m", "diffusion_runtime.launcher", "--help"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert helped.returncode == 0 and "--image-model" in helped.stdout, helped.stderr
    assert REPOSITORY == PROJECT_ROOT / "model_repository"  # a checkout uses its own folder
