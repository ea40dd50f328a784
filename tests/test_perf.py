"""Process-level CPU settings: glibc's huge-page tunable, added once and kept optional."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from n3deploy import __version__
from n3deploy.perf import HUGEPAGE_TUNABLE, hugepage_env

glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc tunables exist only on Linux with glibc",
)

PRINT_TUNABLES = (
    "from n3deploy.perf import reexec_with_hugepages; import os; "
    "reexec_with_hugepages(); print(os.environ.get('GLIBC_TUNABLES'))"
)


def test_hugepage_env_adds_the_tunable_and_keeps_the_others():
    assert hugepage_env({})["GLIBC_TUNABLES"] == HUGEPAGE_TUNABLE
    assert hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:" + HUGEPAGE_TUNABLE
    )
    # a user's own choice for the same tunable wins
    assert hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "N3DEPLOY_HUGEPAGES")}
    return {**env, **extra}


@glibc_linux
def test_a_process_restarts_itself_once_with_huge_pages():
    out = subprocess.run([sys.executable, "-c", PRINT_TUNABLES], capture_output=True, text=True, env=_clean_env(), check=True)
    assert out.stdout.strip() == HUGEPAGE_TUNABLE  # printed once: by the restarted process only


@glibc_linux
def test_the_restart_can_be_turned_off():
    out = subprocess.run(
        [sys.executable, "-c", PRINT_TUNABLES], capture_output=True, text=True, env=_clean_env(N3DEPLOY_HUGEPAGES="0"), check=True
    )
    assert out.stdout.strip() == "None"


def test_the_command_line_still_answers_after_restarting():
    out = subprocess.run([sys.executable, "-m", "n3deploy.cli", "--version"], capture_output=True, text=True, env=_clean_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"n3deploy {__version__}"


def test_only_the_console_command_restarts(monkeypatch):
    # `n3deploy ...` (argv from the command line) restarts; calls from Python with argv never do
    import n3deploy.perf as perf
    from n3deploy import cli

    calls = []
    monkeypatch.setattr(perf, "reexec_with_hugepages", lambda: calls.append("restart"))
    monkeypatch.setattr(sys, "argv", ["n3deploy", "--version"])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == ["restart"]
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert calls == ["restart"]
