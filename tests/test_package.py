"""The house rules of the package: one public surface, one error tree, layers that import downwards
only, modules of one job, and a wheel that installs `miniflow` and nothing else."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import miniflow
from miniflow.protocol import errors

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("protocol", "persistence", "coordinator", "actors", "ops")  # each may import only those before it
MAX_MODULE_LINES = 360  # "about 350": past it a module says why with a "# size:" comment


def all_modules() -> list[str]:
    names = ["miniflow"]
    for info in pkgutil.walk_packages(miniflow.__path__, "miniflow."):
        if ".migrations" not in info.name:  # Alembic's scripts run only inside Alembic
            names.append(info.name)
    return names


# -- the public surface ---------------------------------------------------------------------------
def test_step_code_imports_its_whole_surface_from_miniflow() -> None:
    from miniflow import StepContext, step

    @step("package-test.double")
    def double(ctx: StepContext) -> int:
        return 2 * int(ctx.params["n"])

    assert double(StepContext(run_id="r", workflow="w", step="s", attempt=1, params={"n": 21})) == 42


def test_every_name_in_all_is_exported_and_every_public_name_is_in_all() -> None:
    for name in miniflow.__all__:
        assert getattr(miniflow, name) is not None, name
    subpackages = set(LAYERS)
    public = {name for name in dir(miniflow) if not name.startswith("_")} - subpackages
    assert public == set(miniflow.__all__) - {"__version__"}
    assert len(set(miniflow.__all__)) == len(miniflow.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from miniflow import *", namespace)  # noqa: S102 - the point of the test
    assert set(namespace) - {"__builtins__"} == set(miniflow.__all__)


@pytest.mark.parametrize("package", [f"miniflow.{layer}" for layer in LAYERS] + ["miniflow.persistence.repository"])
def test_each_package_exports_what_its_all_names(package: str) -> None:
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", []):
        assert hasattr(module, name), f"{package}.__all__ names {name!r}, which it does not have"


# -- one error tree -------------------------------------------------------------------------------
def test_every_exception_miniflow_defines_is_in_the_one_tree_and_its_drawing() -> None:
    drawn = errors.__doc__ or ""
    found = []
    for name in all_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found.append(cls)
                assert issubclass(cls, errors.MiniFlowError), f"{name}.{cls.__name__} is outside the error tree"
                assert re.search(rf"(?m)^[ │├└─]*{cls.__name__}\b", drawn), \
                    f"{cls.__name__} is not drawn in the tree of protocol/errors.py"
    assert len(found) >= 15


def test_a_wait_that_times_out_is_a_miniflow_error_and_a_timeout_error() -> None:
    exc = errors.WaitTimedOut("the run", 1.5)
    assert isinstance(exc, errors.MiniFlowError) and isinstance(exc, TimeoutError)
    assert str(exc) == "timed out after 1.5s waiting for the run"


# -- layers and modules ---------------------------------------------------------------------------
def source_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py") if "migrations" not in p.parts)


def imported_modules(path: Path) -> list[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    package = ["miniflow", *path.relative_to(ROOT).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                found.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.append(node.module)
    return found


def test_layers_import_only_the_layers_below_them_and_always_as_miniflow() -> None:
    problems = []
    for path in source_files():
        layer = path.relative_to(ROOT).parts[0]
        allowed = set(LAYERS[:LAYERS.index(layer) + 1])
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in LAYERS:
                problems.append(f"{path.relative_to(ROOT)} imports {name!r}: write miniflow.{name}")
            elif top == "miniflow" and name != "miniflow":
                if name.split(".")[1] not in allowed:
                    problems.append(f"{path.relative_to(ROOT)} ({layer}) imports {name}, a layer above it")
    assert not problems, "\n".join(problems)


def test_benchmarks_do_not_import_the_tests() -> None:
    offenders = [f"{p.relative_to(ROOT)}: {name}" for p in (ROOT / "bench").glob("*.py")
                 for name in imported_modules(p) if name.split(".")[0] == "tests"]
    assert not offenders, offenders


def test_no_module_is_over_the_size_limit_without_saying_why() -> None:
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in source_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
            and "# size:" not in p.read_text(encoding="utf-8")]
    assert not long, long


# -- the wheel ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' build tree: stale files would ship
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("miniflow-*.whl")
    return built


@pytest.fixture(scope="module")
def clean_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the wheel installed (no dependencies, no site-packages of ours)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    return venv


def test_the_wheel_holds_the_miniflow_package_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"miniflow", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for needed in ("miniflow/protocol/codec.py", "miniflow/ops/cli/__init__.py", "miniflow/persistence/alembic.ini",
                   "miniflow/persistence/migrations/versions/0001_initial_schema.py", "miniflow/protocol/PROTOCOL.md"):
        assert needed in names


def venv_python(venv: Path, code: str, *, with_dependencies: bool) -> subprocess.CompletedProcess[str]:
    """Run code in the clean venv from an empty folder; its dependencies (never MiniFlow) can be lent
    from this environment's site-packages."""
    if with_dependencies:
        site = next((venv / "lib").glob("python*/site-packages"))
        (site / "lent-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return subprocess.run([str(venv / "bin" / "python"), "-I", "-c", code], cwd=venv, capture_output=True,
                          text=True, timeout=120)


def test_the_installed_wheel_alone_offers_no_top_level_layer_modules(clean_venv: Path) -> None:
    code = ("import importlib.util as u\n"
            f"print([n for n in {list(LAYERS)!r} if u.find_spec(n) is not None])\n"
            "print(u.find_spec('miniflow').origin)")
    done = venv_python(clean_venv, code, with_dependencies=False)
    assert done.returncode == 0, done.stderr
    found, origin = done.stdout.splitlines()
    assert found == "[]"
    assert origin.startswith(str(clean_venv))


def test_the_installed_wheel_imports_miniflow_and_runs_its_command(clean_venv: Path) -> None:
    code = ("import miniflow, miniflow.ops.cli\n"
            "from miniflow import StepContext, step\n"
            "print(miniflow.__file__)")
    done = venv_python(clean_venv, code, with_dependencies=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(clean_venv))
    command = subprocess.run([str(clean_venv / "bin" / "miniflow"), "validate",
                              str(ROOT / "examples" / "diamond.yaml")], cwd=clean_venv, capture_output=True, text=True,
                             timeout=120)
    assert command.returncode == 0, command.stderr
    assert "ok (diamond" in command.stdout
    upgrade = subprocess.run([str(clean_venv / "bin" / "miniflow"), "db", "upgrade"], cwd=clean_venv,
                             capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin", "MINIFLOW_DATABASE_URL": f"sqlite:///{clean_venv}/w.db"})
    assert upgrade.returncode == 0, upgrade.stderr  # the migrations ship inside the package
