"""The package as a user installs it: the wheel's import names, its torch requirement, and `pip install`
into an environment that holds another torch version (which must stay).

Real builds (`pip wheel`, setuptools, no network) and a real `pip install` into a fresh venv; the
venv sees this environment's packages through a .pth file (no downloads) and holds its own "torch"
2.5.0, a stub distribution standing for the user's CUDA build."""
from __future__ import annotations

import email
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
USER_TORCH = "2.5.0"


def _pip(*args: str, python: Path | None = None) -> subprocess.CompletedProcess[str]:
    target = ["--python", str(python)] if python is not None else []
    cmd = [sys.executable, "-m", "pip", *target, *args, "--no-index", "--disable-pip-version-check", "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project's wheel and a stub torch wheel, built offline into one folder."""
    out = tmp_path_factory.mktemp("wheels")
    stub = tmp_path_factory.mktemp("torch-stub")
    (stub / "torch").mkdir()
    (stub / "torch" / "__init__.py").write_text(f'__version__ = "{USER_TORCH}"\n')
    (stub / "pyproject.toml").write_text(f'[project]\nname = "torch"\nversion = "{USER_TORCH}"\n'
                                         '[build-system]\nrequires = ["setuptools"]\n'
                                         'build-backend = "setuptools.build_meta"\n')
    for src in (ROOT, stub):
        res = _pip("wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(out))
        assert res.returncode == 0, res.stderr[-3000:]
    return out


def _project_wheel(wheels: Path) -> Path:
    [whl] = wheels.glob("deepseek_inspector-*.whl")
    return whl


def test_wheel_ships_only_names_that_cannot_collide(wheels: Path) -> None:
    with zipfile.ZipFile(_project_wheel(wheels)) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"inspector", "inspector_engine", "inspector_plugins"}
    assert "inspector_engine/model/__init__.py" in names and "inspector_plugins/weight_norm/probe.py" in names
    assert "inspector/tui/app.tcss" in names                          # package data travels too
    assert "weight_norm = inspector_plugins.weight_norm:register" in entry_points


def test_torch_requirement_is_a_range_that_keeps_older_torch(wheels: Path) -> None:
    with zipfile.ZipFile(_project_wheel(wheels)) as z:
        meta = email.message_from_bytes(next(z.read(n) for n in z.namelist() if n.endswith(".dist-info/METADATA")))
    [torch_req] = [Requirement(r) for r in meta.get_all("Requires-Dist") if Requirement(r).name == "torch"]
    assert not any(s.operator in ("==", "===") for s in torch_req.specifier)
    assert torch_req.specifier.contains(USER_TORCH) and torch_req.specifier.contains("2.13.0")
    assert "torch==${TORCH_VERSION:-2.13.0}" in (ROOT / "scripts" / "setup_env.sh").read_text()   # the pin lives here


def test_pip_install_keeps_the_users_torch(wheels: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "user-env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_project_deps.pth").write_text(f"{ours}\n")      # pandas, dash, ...: no downloads
    res = _pip("install", "--find-links", str(wheels), "torch==" + USER_TORCH, python=python)
    assert res.returncode == 0, res.stderr[-3000:]

    res = _pip("install", "--find-links", str(wheels), str(_project_wheel(wheels)), python=python)
    assert res.returncode == 0, res.stderr[-3000:]
    probe = ("import importlib.metadata as m, importlib.util as u; "
             "print(m.version('torch')); print(u.find_spec('inspector_engine').origin); "
             "print(u.find_spec('engine'), u.find_spec('plugins'))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    version, origin, generic = out.stdout.splitlines()
    assert version == USER_TORCH
    assert Path(origin).is_relative_to(site)
    assert generic == "None None"
