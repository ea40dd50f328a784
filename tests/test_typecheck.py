"""The TensorRT code type-checked against NVIDIA's ``tensorrt-stubs`` (no GPU, no TensorRT needed).

mypy runs with ``--python-executable`` of a separate environment that holds only the stubs
(``tests/trt_stubs.py``; never in ``.venv``, where they would make ``import tensorrt`` succeed).
The second test proves the check sees the TensorRT calls: a copy of the package with one real
call misspelt (or called with a wrong argument type) must fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trt_stubs import ensure_stubs_env

ROOT = Path(__file__).resolve().parents[1]
TRT_FILES = ["n3deploy/tensorrt/builder.py", "n3deploy/tensorrt/runner.py", "n3deploy/tensorrt/shapes.py",
             "n3deploy/backends/tensorrt_backend.py"]
MYPY = Path(sys.executable).with_name("mypy")


@pytest.fixture(scope="session")
def stubs_python() -> Path:
    if not MYPY.exists():
        pytest.skip(f"mypy is not installed next to {sys.executable} (pip install -e '.[dev]')")
    try:
        return ensure_stubs_env()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"could not install tensorrt-stubs into {ROOT / '.venv-trt-stubs'} (offline?): {exc}")


def _mypy(stubs_python: Path, cwd: Path, files: list[str]) -> subprocess.CompletedProcess:
    cmd = [str(MYPY), "--python-executable", str(stubs_python), "--cache-dir", str(ROOT / ".mypy_cache_trt"),
           "--follow-imports=silent", "--no-error-summary", "--show-error-codes", *files]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_stubs_stay_out_of_the_runtime_environment(stubs_python: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("tensorrt")  # in the test's (runtime) environment
    where = "" if spec is None else f"{spec.origin} {list(spec.submodule_search_locations or [])}"
    assert ".venv-trt-stubs" not in where and "tensorrt_stubs" not in where
    stubs = subprocess.run([str(stubs_python), "-c", "import importlib.util as u; print(u.find_spec('tensorrt_stubs').origin)"],
                           capture_output=True, text=True, check=True)
    assert ".venv-trt-stubs" in stubs.stdout


def test_tensorrt_code_type_checks_against_the_stubs(stubs_python: Path) -> None:
    res = _mypy(stubs_python, ROOT, TRT_FILES)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("path", "real", "broken", "code"), [
    ("n3deploy/tensorrt/builder.py", "config = builder.create_builder_config()", "config = builder.create_builder_confg()",
     "attr-defined"),
    ("n3deploy/tensorrt/builder.py", "parser.parse_from_file(str(onnx_path))", "parser.parse_from_file(onnx_path)",
     "arg-type"),
    ("n3deploy/tensorrt/runner.py", "context.execute_async_v3(self._stream.cuda_stream)",
     "context.execute_async_v2(self._stream.cuda_stream)", "attr-defined"),  # removed in TensorRT 10
])
def test_the_check_sees_the_tensorrt_calls(stubs_python: Path, tmp_path: Path, path: str, real: str, broken: str,
                                           code: str) -> None:
    shutil.copytree(ROOT / "n3deploy", tmp_path / "n3deploy", ignore=shutil.ignore_patterns("*.pyc", "__pycache__", "assets"))
    target = tmp_path / path
    source = target.read_text()
    assert source.count(real) == 1, f"{real!r} not found once in {path}: update this test"
    target.write_text(source.replace(real, broken))
    res = _mypy(stubs_python, tmp_path, [path])
    assert res.returncode != 0 and f"[{code}]" in res.stdout, res.stdout + res.stderr
    assert path in res.stdout
