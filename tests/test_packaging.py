"""What `pip install` gives a user: one distinctive import name, and a worker that starts
from any directory. The wheel is built from a copy of the sources (a stale `build/` in
the checkout would otherwise leak into it) and installed into a fresh virtualenv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from dspy_bridge.tools.client import WorkerClient

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
SHADOWS = ("protocol", "bridge", "msgpack", "dspy")


def _import_name(package_dir: Path) -> str:
    """The import name a folder of the checkout is installed under (the package-dir map)."""
    for name, folder in sorted(PYPROJECT["package-dir"].items(), key=lambda kv: -len(kv[1])):
        root = REPO / folder
        if package_dir == root or root in package_dir.parents:
            rest = package_dir.relative_to(root).parts
            return ".".join((name, *rest))
    raise AssertionError(f"{package_dir} is outside every mapped folder")


def test_the_package_list_names_every_folder_of_the_checkout() -> None:
    on_disk = {
        _import_name(init.parent)
        for folder in PYPROJECT["package-dir"].values()
        for init in (REPO / folder).rglob("__init__.py")
    }
    assert on_disk == set(PYPROJECT["packages"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("bridge", "protocol"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(source)],
        check=True, capture_output=True,
    )
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_installs_one_distinctive_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"dspy_bridge"}
    for data in ("dspy_bridge/py.typed", "dspy_bridge/protocol/PROTOCOL.md",
                 "dspy_bridge/protocol/vectors/vectors.json"):
        assert data in names


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the wheel; its dependencies are read from this one's
    site-packages by a path entry (which runs none of this environment's .pth hooks, so
    the checkout's editable install is not visible there)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         str(wheel)],
        check=True, capture_output=True,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


@pytest.fixture
def shadowing_cwd(tmp_path: Path) -> Path:
    """A working directory whose stray modules would break any import that reached them."""
    for name in SHADOWS:
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('stray {name}.py imported')\n")
    return tmp_path


def test_the_installed_package_comes_from_the_fresh_environment(installed: Path) -> None:
    located = subprocess.run(
        [str(installed / "bin" / "python"), "-c",
         "import dspy_bridge.protocol as p; print(p.__file__)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert Path(located).is_relative_to(installed)


@pytest.mark.parametrize("launcher", [["dspy-bridge"], ["python", "-P", "-m", "dspy_bridge"]])
def test_the_worker_starts_beside_stray_modules(
    installed: Path, shadowing_cwd: Path, launcher: list[str]
) -> None:
    command = [str(installed / "bin" / launcher[0]), *launcher[1:]]
    with WorkerClient([], command=command, cwd=shadowing_cwd) as worker:
        assert worker.call("ping")["status"] in {"ok", "loading"}
        assert worker.call("create_program", {
            "program_id": "qa", "program_type": "predict", "signature": "question -> answer",
        })["program_id"] == "qa"
