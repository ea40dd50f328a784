"""A small virtual environment holding only NVIDIA's ``tensorrt-stubs``, for type-checking TensorRT code.

The stubs stay out of ``.venv``: installed there they make ``import tensorrt`` succeed as an empty
package. ``ensure_stubs_env()`` creates ``.venv-trt-stubs/`` on first use (``pip install --no-deps
tensorrt-stubs==10.13.0.35.1``; its declared dependency is the placeholder ``tensorrt`` wheel), then

* marks ``tensorrt`` and ``tensorrt_bindings`` as typed (``py.typed``): the wheel ships ``.pyi``
  files without the PEP 561 marker, so mypy would skip them as untyped;
* repairs the two kinds of invalid Python in 10.13's generated stubs (a parameter named ``in``,
  a parameter without a default after defaulted ones), which mypy rejects as syntax errors;
* adds a ``.pth`` line pointing at the project's ``.venv`` site-packages, so mypy run with
  ``--python-executable .venv-trt-stubs/bin/python`` sees numpy & co. as well.

Run ``python tests/trt_stubs.py`` (``make trt-stubs``) to create it ahead of ``make test``.
"""

from __future__ import annotations

import ast
import keyword
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUBS_ENV = ROOT / ".venv-trt-stubs"
STUBS_REQUIREMENT = "tensorrt-stubs==10.13.0.35.1"
_DONE = ".n3deploy-ready"

__all__ = ["ensure_stubs_env", "stubs_python", "repair_stub_source", "STUBS_ENV"]


def stubs_python() -> Path:
    return STUBS_ENV / "bin" / "python"


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


def _split_params(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _fix_defaults(line: str) -> str:
    """``def f(a: int = None, b: int)`` -> ``def f(a: int = None, b: int = ...)``."""
    head, _, rest = line.partition("(")
    depth, end = 1, 0
    for end, ch in enumerate(rest):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            break
    params, tail = _split_params(rest[:end]), rest[end:]
    seen_default = False
    for i, p in enumerate(params):
        if "=" in p:
            seen_default = True
        elif seen_default and p.strip() and not p.strip().startswith("*"):
            params[i] = p.rstrip() + " = ..."
    return f"{head}({','.join(params)}{tail}"


_KEYWORD_PARAM = re.compile(r"([(,]\s*)(" + "|".join(keyword.kwlist) + r")(\s*:)")


def repair_stub_source(text: str, max_fixes: int = 200) -> str:
    """``text`` with the stubs' invalid parameter lists made valid (keyword names get a ``_`` suffix)."""
    text = _KEYWORD_PARAM.sub(r"\1\2_\3", text)
    for _ in range(max_fixes):
        try:
            ast.parse(text)
            return text
        except SyntaxError as exc:
            lines = text.splitlines()
            if exc.lineno is None or "default" not in str(exc.msg):
                raise
            lines[exc.lineno - 1] = _fix_defaults(lines[exc.lineno - 1])
            text = "\n".join(lines) + "\n"
    raise RuntimeError("too many syntax errors in the TensorRT stubs")


def _recipe() -> str:
    """What the environment was made by: the requirement and this file's digest (a change rebuilds it)."""
    import hashlib

    return f"{STUBS_REQUIREMENT} {hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]}\n"


def ensure_stubs_env() -> Path:
    """Create (once per recipe) and return the stubs environment's Python."""
    python = stubs_python()
    done = STUBS_ENV / _DONE
    if done.is_file() and done.read_text() == _recipe():
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(STUBS_ENV)], check=True)
    site = _site_packages(python)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(site), "--upgrade", STUBS_REQUIREMENT], check=True)
    for package in ("tensorrt", "tensorrt_bindings"):
        folder = site / package
        (folder / "py.typed").write_text("")
        for stub in folder.glob("*.pyi"):
            stub.write_text(repair_stub_source(stub.read_text()))
    (site / "n3deploy-project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done.write_text(_recipe())
    return python


if __name__ == "__main__":
    print(ensure_stubs_env())
