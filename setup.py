"""The wheel's one addition to what pyproject.toml declares: the committed model repository.

The launcher renders ``model_repository/`` for each host, so an installed package needs its files too. The
wheel carries them as ``diffusion_runtime/model_repository``, where ``launcher.repository`` looks when there is
no checkout. An editable install reads the checkout's own folder instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithModelRepository(build_py):
    """``build_py`` that also copies ``model_repository/`` into the built ``diffusion_runtime`` package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "diffusion_runtime" / "model_repository"
        if target.exists():
            shutil.rmtree(target)  # a model removed from the checkout must not linger in a rebuilt wheel
        source = Path(__file__).resolve().parent / "model_repository"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithModelRepository})
