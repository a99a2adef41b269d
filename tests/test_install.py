"""scripts/install.sh: a dry run prints the whole plan and changes nothing (as root and as an
unprivileged user), option mistakes are refused, every shell script passes shellcheck; and, opt in
with `-m install`, the real install, reinstall, uninstall and purge in a Debian 12 chroot
(scripts/install-check.sh)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

INSTALL = ROOT / "scripts" / "install.sh"
STEPS = ("packages", "group", "user", "state", "venv", "package", "models", "config", "unit")
UNINSTALL_STEPS = ("service", "unit", "venv", "models", "config", "state", "user", "packages")
# What an install would touch; a dry run must leave every one as it was.
TOUCHED = (
    "/etc/edge-agent",
    "/opt/edge-agent",
    "/var/lib/edge-agent",
    "/etc/systemd/system/edge-agent.service",
    "/etc/systemd/system/multi-user.target.wants/edge-agent.service",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
)
NOBODY = 65534
STEP_LINE = re.compile(r"^\[([a-z]+)\] ([a-z ]+?): ")


def snapshot() -> dict[str, tuple[int, int, int] | None]:
    """(mode, size, mtime) of every path an install touches and of everything under it."""
    seen: dict[str, tuple[int, int, int] | None] = {}
    for top in map(Path, TOUCHED):
        paths = [top, *sorted(top.rglob("*"))] if top.is_dir() else [top]
        for path in paths:
            try:
                st = path.lstat()
            except FileNotFoundError:
                seen[str(path)] = None
                continue
            seen[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


@pytest.fixture(scope="module")
def public_copy() -> Iterator[Path]:
    """The parts of the checkout install.sh reads, in a folder an unprivileged user can read
    (the checkout itself may sit under a private home or /root)."""
    top = Path(tempfile.mkdtemp(prefix="edge-agent-install-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("edge_agent", "configs", "models", "systemd", "scripts"):
        shutil.copytree(ROOT / name, top / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, top / name)
    for path in [top, *top.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    yield top
    shutil.rmtree(top)


def run_script(script: Path, args: list[str], user: str) -> subprocess.CompletedProcess[str]:
    """install.sh ARGS as this process's user ("self") or as nobody (dropped with setpriv)."""
    cmd = [str(script), *args]
    if user == "nobody" and os.geteuid() == 0:  # not root: already unprivileged as "self"
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def script_for(user: str, public_copy: Path) -> Path:
    """The real script for this user, the readable copy for nobody (run as this user when
    not root: it is unprivileged already)."""
    if user == "self" or os.geteuid() != 0:
        return INSTALL
    return public_copy / "scripts" / "install.sh"


def step_lines(out: str) -> list[tuple[str, str, list[str]]]:
    """(step, status, commands printed under it) for every step line of a run."""
    steps: list[tuple[str, str, list[str]]] = []
    for line in out.splitlines():
        match = STEP_LINE.match(line)
        if match:
            steps.append((match[1], match[2], []))
        elif line.startswith("    $ ") and steps:
            steps[-1][2].append(line[6:])
    return steps


@pytest.mark.parametrize("user", ["self", "nobody"])
@pytest.mark.parametrize(
    ("args", "expected"),
    [([], (*STEPS, "service")), (["--uninstall", "--purge"], UNINSTALL_STEPS)],
    ids=["install", "uninstall-purge"],
)
def test_dry_run_prints_the_plan_and_changes_nothing(
    public_copy: Path, user: str, args: list[str], expected: tuple[str, ...]
) -> None:
    script = script_for(user, public_copy)
    before = snapshot()
    proc = run_script(script, ["--dry-run", *args], user)
    assert proc.returncode == 0, proc.stderr
    assert snapshot() == before
    assert proc.stdout.startswith("install.sh: dry run, nothing is changed\n")
    steps = step_lines(proc.stdout)
    assert [name for name, _, _ in steps] == list(expected), proc.stdout
    for name, status, commands in steps:
        # A dry run only reports, plans or skips; a planned step shows its commands.
        assert status in {"unchanged", "kept", "skipped"} or status.startswith("would "), name
        assert bool(commands) == status.startswith("would "), (name, status, commands)
    plan = " ".join(cmd for _, _, cmds in steps for cmd in cmds)
    if args == [] and not Path("/opt/edge-agent/.venv").exists():
        assert "python3 -m venv --system-site-packages /opt/edge-agent/.venv" in plan
        assert "/opt/edge-agent/.venv/bin/python -m pip install" in plan
    if args == [] and not Path("/etc/edge-agent/config.yaml").exists():
        assert "install -m 0640 -o root -g edge-agent" in plan


@pytest.mark.parametrize(
    ("args", "user", "code", "message"),
    [
        (["--bogus"], "self", 2, "unknown option: --bogus"),
        (["--purge"], "self", 2, "--purge goes with --uninstall"),
        (["--from"], "self", 2, "--from needs a value"),
        (["--uninstall", "--from", "x.whl"], "self", 2, "do not go with --uninstall"),
        (["--dry-run", "--example", "nope"], "self", 2, "configs/nope.yaml not found"),
        (["--dry-run", "--from", "./missing.whl"], "self", 2, "--from ./missing.whl: no such"),
        ([], "nobody", 1, "run as root"),
        (["--help"], "self", 0, "Usage: sudo scripts/install.sh"),
    ],
)
def test_mistakes_are_refused_with_one_line(
    public_copy: Path, args: list[str], user: str, code: int, message: str
) -> None:
    if user == "nobody" and os.geteuid() != 0:
        user = "self"  # already unprivileged
    script = public_copy / "scripts" / "install.sh" if user == "nobody" else INSTALL
    before = snapshot()
    proc = run_script(script, args, user)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert message in (proc.stdout if code == 0 else proc.stderr)
    if code != 0:
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert snapshot() == before


@pytest.fixture(scope="module")
def shellcheck() -> str:
    """The shellcheck binary, installed from Debian's apt when missing (CI runs as root)."""
    found = shutil.which("shellcheck")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("shellcheck is missing: sudo apt-get install -y shellcheck")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "shellcheck"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    found = shutil.which("shellcheck")
    assert found, "apt-get installed shellcheck but it is not on PATH"
    return found


def shell_scripts() -> list[Path]:
    """scripts/*.sh and any other script under scripts/ or .ci/ with a sh/bash shebang."""
    candidates = sorted({*ROOT.glob("scripts/*"), *ROOT.glob(".ci/*")})
    found = []
    for path in candidates:
        if not path.is_file():
            continue
        first = path.read_bytes().split(b"\n", 1)[0]
        if path.suffix == ".sh" or re.match(rb"#!.*\b(ba)?sh\b", first):
            found.append(path)
    return found


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_is_clean(shellcheck: str, script: Path) -> None:
    proc = subprocess.run(
        [shellcheck, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shell_scripts_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in shell_scripts()}
    expected = {"scripts/install.sh", "scripts/rootfs.sh", "scripts/install-check.sh", ".ci/run"}
    assert expected <= names


@pytest.mark.install
def test_install_in_a_debian_chroot() -> None:
    """The real run: root, network (Debian mirror, PyPI); minutes on a cold rootfs cache."""
    if os.geteuid() != 0:
        pytest.fail("scripts/install-check.sh needs root (debootstrap, mount, chroot)")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "install-check.sh")],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"^\[check\] \d+ passed, 0 failed$", out, re.M), out
    for needed in (
        "ok: second run: every step says unchanged",
        "ok: second run: no installed file changed",
        "ok: uninstall: state dir (outbox) kept",
        "ok: purge: user removed",
    ):
        assert needed in out, needed
