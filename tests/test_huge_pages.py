"""glibc's huge-page malloc: the environment it sets, when it applies, and the relaunch."""

import json
import os
import subprocess
import sys

import pytest

from usae_jax.parallel import huge_pages


def test_environment_adds_the_tunable_and_keeps_others():
    env = huge_pages.huge_page_environment({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = huge_pages.huge_page_environment(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"}
    )
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert huge_pages.huge_page_malloc_active(env)


@pytest.mark.parametrize(
    "tunables,active",
    [
        (None, False),
        ("", False),
        ("glibc.malloc.hugetlb=0", False),
        ("glibc.malloc.arena_max=2", False),
        ("glibc.malloc.hugetlb=1", True),
        ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2", True),
    ],
)
def test_active_reads_glibc_tunables(tunables, active):
    env = {} if tunables is None else {"GLIBC_TUNABLES": tunables}
    assert huge_pages.huge_page_malloc_active(env) is active


def test_unsupported_reasons(tmp_path, monkeypatch):
    never = tmp_path / "never"
    never.write_text("always madvise [never]\n")
    madvise = tmp_path / "madvise"
    madvise.write_text("always [madvise] never\n")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert huge_pages.unsupported_reason(str(madvise)) is None
    assert "[never]" in huge_pages.unsupported_reason(str(never))
    assert "unreadable" in huge_pages.unsupported_reason(str(tmp_path / "missing"))
    monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("glibc", "2.31"))
    assert "predates" in huge_pages.unsupported_reason(str(madvise))
    monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("", ""))
    assert "not glibc" in huge_pages.unsupported_reason(str(madvise))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "not Linux" in huge_pages.unsupported_reason(str(madvise))


def test_relaunch_execs_the_same_command_with_the_tunable(monkeypatch):
    calls = []
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(huge_pages, "unsupported_reason", lambda: None)

    def fake_execve(path, argv, env):
        calls.append((path, argv, env))
        raise SystemExit(0)

    monkeypatch.setattr(huge_pages.os, "execve", fake_execve)
    with pytest.raises(SystemExit):
        huge_pages.relaunch_with_huge_page_malloc(["python", "-m", "experiments.train", "--x=1"])
    ((path, argv, env),) = calls
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "experiments.train", "--x=1"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    # already active: no relaunch, nothing to report
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert huge_pages.relaunch_with_huge_page_malloc(["python"]) is None
    # unsupported: no relaunch, the reason
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setattr(huge_pages, "unsupported_reason", lambda: "not Linux (test)")
    assert huge_pages.relaunch_with_huge_page_malloc(["python"]) == "not Linux (test)"
    assert len(calls) == 1


def test_relaunched_process_runs_with_the_tunable(tmp_path):
    # a real relaunch: the child replaces itself once and then sees the tunable (where the
    # machine cannot use it, the child goes on unrelaunched and says why)
    script = tmp_path / "relaunch.py"
    script.write_text(
        "import os, sys\n"
        "from usae_jax.parallel.huge_pages import relaunch_with_huge_page_malloc\n"
        "print('start', flush=True)\n"
        "reason = relaunch_with_huge_page_malloc()\n"
        "print(reason or os.environ['GLIBC_TUNABLES'], sys.argv[1:])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, str(script), "--flag=1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    reason = huge_pages.unsupported_reason()
    if reason is None:
        expected = ["start", "start", "glibc.malloc.hugetlb=1 ['--flag=1']"]
    else:
        expected = ["start", f"{reason} ['--flag=1']"]
    assert done.stdout.splitlines() == expected


def test_benchmark_runs_both_sides_in_fresh_processes():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "benchmarks/malloc_pages.py", "--config=default", "--steps=1"]
        + ["--rounds=1"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    reason = huge_pages.unsupported_reason()
    if reason is not None:
        assert done.returncode != 0 and reason in done.stderr
        return
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[0])
    assert result["tunable"] == "glibc.malloc.hugetlb=1" and len(result["ratios"]) == 1
    for side in ("huge", "default"):
        assert result[side]["ms_per_step"] > 0 and result[side]["minor_faults_per_step"] >= 0
    assert "huge/default step time" in done.stdout
