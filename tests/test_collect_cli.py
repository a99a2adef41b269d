"""`edge-agent collect` as a user meets it: mistakes are one line and exit 2, signals stop it
cleanly with the exports flushed, `--config` brings the broker login, and a terminal gets a
live table."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import IMAGES, ROOT, SSD, Broker, base_config, free_port, write_config
from tests.test_cli_errors import PASSWORD, auth_broker  # noqa: F401 (user watcher, edge/#)
from tests.test_collect import (
    CollectorProcess,
    Publisher,
    dumps,
    index_ids,
    unique_prefix,
    wait_until,
)
from tests.test_collect_units import good_full


def _collect(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "collect", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("edge-agent: error: ")
    return lines[0]


def test_unreachable_broker_is_one_line_and_exit_2(tmp_path: Path) -> None:
    port = free_port()
    line = _one_error_line(_collect("--port", str(port), "--out", str(tmp_path / "ds")))
    assert f"broker 127.0.0.1:{port}: connection refused" in line


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_unusable_out_is_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker if kind == "a file" else blocker / "ds"
    line = _one_error_line(_collect("--port", str(free_port()), "--out", str(out)))
    assert f"--out {out}: " in line
    assert ("not a folder" if kind == "a file" else "Not a directory") in line


def test_bad_options_are_one_line_and_exit_2(tmp_path: Path) -> None:
    out = str(tmp_path / "ds")
    line = _one_error_line(_collect("--out", out, "--topic", "edge/x+/samples"))
    assert "--topic 'edge/x+/samples'" in line
    line = _one_error_line(_collect("--out", out, "--group", "a/b"))
    assert "--group 'a/b'" in line
    line = _one_error_line(_collect("--out", out, "--rebuild"))
    assert "no index at" in line


def test_a_second_collector_on_the_same_folder_is_refused(broker: Broker, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = CollectorProcess(broker.port, out, "--topic", f"{unique_prefix()}/+/+/samples")
    try:
        line = _one_error_line(_collect("--port", str(broker.port), "--out", str(out)))
        assert "in use by another collector (pid" in line
    finally:
        assert first.stop() == 0
        first.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_cleanly_and_flushes_the_exports(
    broker: Broker, tmp_path: Path, signum: int
) -> None:
    out, prefix = tmp_path / "ds", unique_prefix()
    # An hour between refreshes: the exports can only come from the flush at exit.
    col = CollectorProcess(
        broker.port, out, "--topic", f"{prefix}/+/+/samples", "--export-interval", "3600"
    )
    pub = Publisher(broker.port)
    try:
        body = good_full()
        pub.send(f"{prefix}/dev-1/cam/samples", [dumps(body)])
        assert wait_until(lambda: index_ids(out) == [body["id"]], 30), col.output
        assert not (out / "annotations" / "coco.json").exists()
        col.proc.send_signal(signum)
        assert col.proc.wait(30) == 0, col.output
    finally:
        pub.close()
        col.kill()
    coco = json.loads((out / "annotations" / "coco.json").read_text())
    assert [im["sample_id"] for im in coco["images"]] == [body["id"]]
    assert (out / "label_studio" / "tasks.json").is_file() and (out / "data.yaml").is_file()
    assert "1 accepted, 0 duplicates, 0 rejected" in col.finished()


def _agent_yaml(folder: Path, port: int, prefix: str, password: str) -> Path:
    secret = folder / "password"
    secret.write_text(password)
    secret.chmod(0o600)
    cfg = base_config(port, SSD, None, {"cam": {"source": {"type": "images", "path": str(IMAGES)}}})
    cfg["mqtt"].update(username="watcher", password_file=str(secret), topic_prefix=prefix)
    return write_config(folder, cfg)


def test_config_mqtt_section_gives_broker_login_and_topic_prefix(
    auth_broker: Broker,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    prefix = f"edge/{unique_prefix()}"  # the account may use edge/# only
    wrong = _agent_yaml(tmp_path, auth_broker.port, prefix, "wrong")
    line = _one_error_line(_collect("--config", str(wrong), "--out", str(tmp_path / "x")))
    assert "not authorized" in line and PASSWORD not in line
    right = _agent_yaml(tmp_path, auth_broker.port, prefix, PASSWORD)
    col = CollectorProcess(auth_broker.port, tmp_path / "ds", "--config", str(right))
    pub = Publisher(auth_broker.port, ("watcher", PASSWORD))
    try:
        assert col.wait_for_line(f"$share/edge-agent-collect/{prefix}/+/+/samples", 5)
        body = good_full()
        pub.send(f"{prefix}/dev-1/cam/samples", [dumps(body)])
        assert wait_until(lambda: index_ids(tmp_path / "ds") == [body["id"]], 30), col.output
        assert col.stop() == 0
    finally:
        pub.close()
        col.kill()


def test_a_terminal_gets_a_live_table(broker: Broker, tmp_path: Path) -> None:
    out, prefix = tmp_path / "ds", unique_prefix()
    main, child = pty.openpty()
    args = ["--port", str(broker.port), "--out", str(out), "--topic", f"{prefix}/+/+/samples"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "collect", *args],
        stdin=child, stdout=child, stderr=child, cwd=ROOT,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )  # fmt: skip
    os.close(child)
    screen = b""
    pub = Publisher(broker.port)
    try:
        screen += _read_until(main, b"subscribed to", 30)
        pub.send(f"{prefix}/dev-1/cam/samples", [dumps(good_full())])
        screen += _read_until(main, b"samples/s", 30)
        assert wait_until(lambda: len(index_ids(out)) == 1, 30)
        time.sleep(0.6)  # one more refresh of the table
        proc.send_signal(signal.SIGINT)
        screen += _read_until(main, b"collect finished", 30)
        assert proc.wait(30) == 0
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(main)
    text = screen.decode("utf-8", "replace")
    assert "accepted" in text and "duplicates" in text and "rejected" in text
    assert "1 accepted, 0 duplicates, 0 rejected" in text


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data += os.read(fd, 65536)
            except OSError:
                break
    assert marker in data, data.decode("utf-8", "replace")
    return data
