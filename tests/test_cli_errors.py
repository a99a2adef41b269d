"""User mistakes with the helper commands (`watch`, `models inspect`, `models eval`).

Each mistake goes through the real CLI (`python -m edge_agent ...`) and must end with exit 2 and
exactly one `edge-agent: error:` line naming the thing to fix, never a traceback. Faults are
real: a port nobody listens on, a SYN black hole, a password-protected and a TLS mosquitto, a
truncated model, corrupted image bytes, a read-only and a full tmpfs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.publish as publish
import pytest

from edge_agent.errors import UserError
from edge_agent.watch import add_watch_arguments, run
from tests.helpers import MEDIA, ROOT, SSD, SSD_LABELS, Broker, cli, free_port
from tests.tflite_builder import colour_classifier

COCO8 = MEDIA / "images" / "coco8" / "train"
YOLO_LABELS = MEDIA / "annotations" / "coco8" / "labels" / "train"
NAMES = MEDIA / "annotations" / "coco8" / "coco8.yaml"
CAT = MEDIA / "images" / "cat.bmp"
PASSWORD = "w4tch-Pa55"
# Lines the model loaders log on stderr before a model-dependent error (the TFLite runtime
# prints its own INFO line); everything else on stderr must be the one error line.
LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) |INFO: Created TensorFlow Lite)")


def error_line(proc: subprocess.CompletedProcess[str], strict: bool = True) -> str:
    """The single error line of a failed command (strict: nothing else on stderr at all)."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.splitlines()
    if not strict:
        lines = [line for line in lines if not LOG_LINE.match(line)]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edge-agent: error: "), lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# models inspect / models eval


@pytest.fixture(scope="module")
def bad() -> Iterator[Path]:
    """A folder of broken inputs; the cases below refer to it as {bad}."""
    folder = Path(tempfile.mkdtemp(prefix="edge-agent-bad-"))
    (folder / "text.txt").write_text("hello\n")
    (folder / "empty.tflite").write_bytes(b"")
    (folder / "truncated.tflite").write_bytes(SSD.read_bytes()[:1000])
    (folder / "folder.tflite").mkdir()
    (folder / "empty-dir").mkdir()
    (folder / "labels-3.txt").write_text("person\ncar\ndog\n")
    colour_classifier(folder / "classifier.tflite")
    (folder / "names-broken.yaml").write_text("names: [person, car\n")
    (folder / "names-missing.yaml").write_text("path: ../datasets/coco8\n")
    (folder / "names-empty.txt").write_text("\n\n")
    (folder / "list.json").write_text("[1, 2, 3]")
    (folder / "not.json").write_text("{'images': []}")
    (folder / "no-images.json").write_text(json.dumps({"info": {}, "licenses": []}))
    coco: dict[str, Any] = {
        "images": [{"id": 1, "file_name": "000000000009.jpg", "width": 640, "height": 480}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]}],
        "categories": [{"id": 1, "name": "bowl"}],
    }
    _write_json(folder / "coco-no-images-key.json", {"annotations": coco["annotations"]})
    unknown_image = {**coco, "annotations": [{**coco["annotations"][0], "image_id": 7}]}
    _write_json(folder / "coco-unknown-image.json", unknown_image)
    unknown_cat = {**coco, "annotations": [{**coco["annotations"][0], "category_id": 99}]}
    _write_json(folder / "coco-unknown-category.json", unknown_cat)
    bad_box = {**coco, "annotations": [{**coco["annotations"][0], "bbox": [1, 2, 3]}]}
    _write_json(folder / "coco-bad-bbox.json", bad_box)
    elsewhere = {**coco, "images": [{**coco["images"][0], "file_name": "holiday.jpg"}]}
    _write_json(folder / "coco-no-match.json", elsewhere)
    _write_json(folder / "boxes-no-width.json", {"images": [{"file": "000000000009.jpg"}]})
    for name, line in {
        "yolo-short": "0 0.5 0.5",
        "yolo-class": "120 0.5 0.5 0.2 0.2",
        "yolo-text": "person 0.5 0.5 0.2 0.2",
        "yolo-pixels": "0 320 240 64 48",
        "yolo-polygon": "0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2",
    }.items():
        shutil.copytree(YOLO_LABELS, folder / name)
        with (folder / name / "000000000025.txt").open("a") as fh:
            fh.write(line + "\n")
    shutil.copytree(COCO8, folder / "corrupt-images")
    # Garbage with a .jpg name (libjpeg would print its own warning for a damaged JPEG).
    (folder / "corrupt-images" / "zz-broken.jpg").write_bytes(bytes(16) + os.urandom(2000))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


INSPECT = ["models", "inspect"]
EVAL_SSD = ["models", "eval", "--model", str(SSD), "--labels", str(SSD_LABELS)]
EVAL_YOLO = [*EVAL_SSD, "--images", str(COCO8), "--annotations"]

# (id, arguments, fragments the error line must contain, strict: nothing else on stderr)
MODEL_CASES: list[tuple[str, list[str], list[str], bool]] = [
    ("model missing", [*INSPECT, "{bad}/nope.tflite"], ["nope.tflite", "not found", "MODEL"], True),
    (
        "model is a folder",
        [*INSPECT, str(SSD.parent)],
        [str(SSD.parent), "is a folder", "detect.tflite: pass that file"],
        True,
    ),
    ("model empty folder", [*INSPECT, "{bad}/folder.tflite"], ["folder.tflite", "folder"], True),
    ("model is text", [*INSPECT, "{bad}/text.txt"], ["text.txt", "not a TFLite model"], True),
    ("model empty", [*INSPECT, "{bad}/empty.tflite"], ["empty.tflite", "not a TFLite"], True),
    (
        "model truncated",
        [*INSPECT, "{bad}/truncated.tflite"],
        ["truncated.tflite", "rejected the model"],
        False,
    ),
    (
        "labels missing",
        [*INSPECT, str(SSD), "--labels", "{bad}/labels.txt"],
        ["{bad}/labels.txt", "labels file not found", "--labels"],
        True,
    ),
    (
        "labels wrong count",
        [*INSPECT, str(SSD), "--labels", "{bad}/labels-3.txt"],
        ["labels-3.txt", "3 entries", "90 classes"],
        False,
    ),
    (
        "image missing",
        [*INSPECT, str(SSD), "--image", "{bad}/photo.jpg"],
        ["photo.jpg", "image file not found", "--image"],
        True,
    ),
    (
        "image is text",
        [*INSPECT, str(SSD), "--image", "{bad}/text.txt"],
        ["text.txt", "not an image", "--image", ".jpg"],
        True,
    ),
    (
        "image is a folder",
        [*INSPECT, str(SSD), "--image", "{bad}/empty-dir"],
        ["empty-dir", "is a folder", "--image"],
        True,
    ),
    (
        "output folder missing",
        [*INSPECT, str(SSD), "--image", str(CAT), "--output", "{bad}/no/such/dir/out.png"],
        ["{bad}/no/such/dir/out.png", "does not exist", "--output"],
        True,
    ),
    (
        "output extension unknown",
        [*INSPECT, str(SSD), "--image", str(CAT), "--output", "{bad}/out.txt"],
        ["out.txt", ".png", "--output"],
        True,
    ),
    (
        "threshold > 1",
        [*INSPECT, str(SSD), "--threshold", "1.5"],
        ["--threshold 1.5", "0..1"],
        True,
    ),
    ("threads 0", [*INSPECT, str(SSD), "--threads", "0"], ["--threads 0", "1..64"], True),
    (
        "unsupported family (inspect)",
        [*INSPECT, "{bad}/classifier.tflite"],
        ["classifier.tflite", "unsupported output signature", "known formats"],
        False,
    ),
    (
        "images folder missing",
        [*EVAL_SSD, "--images", "{bad}/nope", "--annotations", str(YOLO_LABELS)],
        ["{bad}/nope", "image folder not found", "--images"],
        True,
    ),
    (
        "images folder empty",
        [*EVAL_SSD, "--images", "{bad}/empty-dir", "--annotations", str(YOLO_LABELS)],
        ["empty-dir", "no images", "--images"],
        True,
    ),
    (
        "images is a file",
        [*EVAL_SSD, "--images", str(CAT), "--annotations", str(YOLO_LABELS)],
        ["cat.bmp", "not a folder", "--images"],
        True,
    ),
    (
        "image corrupted",
        [*EVAL_SSD, "--images", "{bad}/corrupt-images", "--annotations", str(YOLO_LABELS)],
        ["zz-broken.jpg", "cannot decode image", "--images"],
        False,
    ),
    (
        "image corrupted, names given",
        [
            *EVAL_YOLO[:-2],
            "{bad}/corrupt-images",
            "--annotations",
            str(YOLO_LABELS),
            "--names",
            str(NAMES),
        ],
        ["zz-broken.jpg", "cannot decode image", "--images"],
        True,
    ),
    (
        "annotations missing",
        [*EVAL_YOLO, "{bad}/gt.json"],
        ["{bad}/gt.json", "annotations file not found", "--annotations"],
        True,
    ),
    (
        "annotations not JSON",
        [*EVAL_YOLO, "{bad}/not.json"],
        ["not.json", "not valid JSON", "line 1 column 2"],
        True,
    ),
    (
        "annotations empty file",
        [*EVAL_YOLO, "{bad}/empty.tflite"],
        ["empty.tflite", "not valid JSON"],
        True,
    ),
    (
        "annotations a list",
        [*EVAL_YOLO, "{bad}/list.json"],
        ["list.json", "expected COCO JSON", "found a JSON list"],
        True,
    ),
    (
        "annotations dict without images",
        [*EVAL_YOLO, "{bad}/no-images.json"],
        ["no-images.json", "found an object with keys info, licenses"],
        True,
    ),
    (
        "coco without images key",
        [*EVAL_YOLO, "{bad}/coco-no-images-key.json"],
        ["coco-no-images-key.json", "images: Field required"],
        True,
    ),
    (
        "coco box for unknown image",
        [*EVAL_YOLO, "{bad}/coco-unknown-image.json"],
        ["coco-unknown-image.json", "annotations[0]: image_id 7 is not in `images`"],
        True,
    ),
    (
        "coco box of unknown category",
        [*EVAL_YOLO, "{bad}/coco-unknown-category.json"],
        ["annotations[0]: category_id 99 is not in `categories`"],
        True,
    ),
    (
        "coco bbox of 3 numbers",
        [*EVAL_YOLO, "{bad}/coco-bad-bbox.json"],
        ["coco-bad-bbox.json", "annotations[0].bbox"],
        True,
    ),
    (
        "boxes JSON without width",
        [*EVAL_YOLO, "{bad}/boxes-no-width.json"],
        ["boxes-no-width.json", "images[0].width: Field required"],
        True,
    ),
    (
        "no image matches the annotations",
        [*EVAL_YOLO, "{bad}/coco-no-match.json"],
        ["coco-no-match.json", "none of the 1 images", "'holiday.jpg'", "--images"],
        True,
    ),
    (
        "no label file matches an image",
        [*EVAL_YOLO, "{bad}/empty-dir", "--names", str(NAMES)],
        ["empty-dir", "no label file matches", "000000000009.txt"],
        True,
    ),
    (
        "yolo line too short",
        [*EVAL_YOLO, "{bad}/yolo-short", "--names", str(NAMES)],
        ["{bad}/yolo-short/000000000025.txt:3:", "expected 5 values", "found 3"],
        True,
    ),
    (
        "yolo class out of range",
        [*EVAL_YOLO, "{bad}/yolo-class", "--names", str(NAMES)],
        ["yolo-class/000000000025.txt:3:", "class 120 is out of range: --names has 80 names"],
        True,
    ),
    (
        "yolo class not a number",
        [*EVAL_YOLO, "{bad}/yolo-text", "--names", str(NAMES)],
        ["yolo-text/000000000025.txt:3:", "'person' is not a whole number"],
        True,
    ),
    (
        "yolo pixel coordinates",
        [*EVAL_YOLO, "{bad}/yolo-pixels", "--names", str(NAMES)],
        ["yolo-pixels/000000000025.txt:3:", "fractions 0..1"],
        True,
    ),
    (
        "yolo polygon",
        [*EVAL_YOLO, "{bad}/yolo-polygon", "--names", str(NAMES)],
        ["yolo-polygon/000000000025.txt:3:", "segmentation polygons"],
        True,
    ),
    (
        "yolo class out of range of model labels",
        [*EVAL_YOLO, "{bad}/yolo-class"],
        ["yolo-class/000000000025.txt:3:", "class 120", "the model has 90 labels", "--names"],
        False,
    ),
    (
        "names missing",
        [*EVAL_YOLO, str(YOLO_LABELS), "--names", "{bad}/coco8.yaml"],
        ["{bad}/coco8.yaml", "names file not found", "--names"],
        True,
    ),
    (
        "names not YAML",
        [*EVAL_YOLO, str(YOLO_LABELS), "--names", "{bad}/names-broken.yaml"],
        ["names-broken.yaml", "not valid YAML: line 2", "--names"],
        True,
    ),
    (
        "names without names key",
        [*EVAL_YOLO, str(YOLO_LABELS), "--names", "{bad}/names-missing.yaml"],
        ["names-missing.yaml", "no `names:`", "--names"],
        True,
    ),
    (
        "names text empty",
        [*EVAL_YOLO, str(YOLO_LABELS), "--names", "{bad}/names-empty.txt"],
        ["names-empty.txt", "no class names", "--names"],
        True,
    ),
    (
        "unsupported family (eval)",
        [
            *["models", "eval", "--model", "{bad}/classifier.tflite", "--images", str(COCO8)],
            *["--annotations", str(YOLO_LABELS), "--names", str(NAMES)],
        ],
        ["classifier.tflite", "unsupported output signature"],
        False,
    ),
    (
        "model labels share nothing with the annotations",
        [
            *["models", "eval", "--model", str(SSD), "--labels", "{bad}/labels-90.txt"],
            *["--images", str(COCO8), "--annotations", str(YOLO_LABELS), "--names", str(NAMES)],
        ],
        ["detect.tflite", "none of the annotated classes", "--labels"],
        False,
    ),
]


@pytest.mark.parametrize(
    ("args", "fragments", "strict"),
    [c[1:] for c in MODEL_CASES],
    ids=[c[0] for c in MODEL_CASES],
)
def test_models_mistake_is_one_line(
    bad: Path, args: list[str], fragments: list[str], strict: bool
) -> None:
    (bad / "labels-90.txt").write_text("".join(f"thing{i}\n" for i in range(90)))
    proc = cli(*(a.format(bad=bad) for a in args), timeout=180)
    line = error_line(proc, strict)
    for fragment in fragments:
        assert fragment.format(bad=bad) in line, line
    print(f"\n{line.replace(str(bad), '{bad}')}")


@contextlib.contextmanager
def tmpfs(options: str) -> Iterator[Path]:
    """A real tmpfs mounted with options (e.g. a read-only or a 16 KiB file system)."""
    folder = Path(tempfile.mkdtemp(prefix="edge-agent-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()


OUTPUT_FAULTS = [
    ("read-only file system", "ro,size=1m", ["cannot write in", "read-only", "--output"]),
    ("disk full", "size=16k", ["No space left on device", "--output"]),
]


@pytest.mark.parametrize(
    ("options", "fragments"), [c[1:] for c in OUTPUT_FAULTS], ids=[c[0] for c in OUTPUT_FAULTS]
)
def test_inspect_output_on_a_bad_file_system(options: str, fragments: list[str]) -> None:
    with tmpfs(options) as folder:
        out = folder / "cat.png"
        proc = cli(*INSPECT, str(SSD), "--image", str(CAT), "--output", str(out))
        line = error_line(proc, strict=options.startswith("ro"))
        assert str(out) in line
        for fragment in fragments:
            assert fragment in line, line
        assert not out.exists(), "a truncated PNG was left behind"
        print(f"\n{line}")


def test_inspect_output_folder_gets_default_name(tmp: Path) -> None:
    proc = cli(*INSPECT, str(SSD), "--image", str(CAT), "--output", str(tmp))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp / "detect.cat.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------
# watch


def _syn_black_hole() -> tuple[socket.socket, list[socket.socket]]:
    """A port whose accept queue is full: the kernel drops new SYNs, as a dead host would."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(3):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(server.getsockname())
        fillers.append(sock)
    time.sleep(0.3)
    return server, fillers


WATCH_CASES: list[tuple[str, list[str], list[str]]] = [
    (
        "connection refused",
        ["--port", "{free}"],
        ["broker 127.0.0.1:{free}", "connection refused", "--host and --port"],
    ),
    (
        "unresolvable host",
        ["--host", "no-such-broker.invalid"],
        ["--host no-such-broker.invalid", "cannot resolve"],
    ),
    ("port 0", ["--port", "0"], ["--port 0", "1..65535"]),
    ("port 70000", ["--port", "70000"], ["--port 70000", "1..65535"]),
    ("topic # in the middle", ["--topic", "a/#/b"], ["--topic 'a/#/b'", "'#' must be"]),
    ("topic + inside a level", ["--topic", "a+"], ["--topic 'a+'", "'+' must be a whole level"]),
    ("topic empty", ["--topic", ""], ["--topic", "empty topic filter", "edge/#"]),
    ("count negative", ["--count", "-1"], ["--count -1", "0 (no limit)"]),
    ("timeout negative", ["--timeout", "-1"], ["--timeout -1", "0 (no limit)"]),
    ("host empty", ["--host", ""], ["--host ''", "not a host name"]),
]


@pytest.mark.parametrize(
    ("args", "fragments"), [c[1:] for c in WATCH_CASES], ids=[c[0] for c in WATCH_CASES]
)
def test_watch_mistake_is_one_line(args: list[str], fragments: list[str]) -> None:
    free = str(free_port())
    proc = cli("watch", *(a.format(free=free) for a in args), timeout=60)
    line = error_line(proc)
    for fragment in fragments:
        assert fragment.format(free=free) in line, line
    print(f"\n{line}")


@pytest.mark.parametrize("kind", ["SYN black hole", "silent server"])
def test_watch_times_out_instead_of_hanging(kind: str) -> None:
    if kind == "SYN black hole":
        server, fillers = _syn_black_hole()
        expected = "no answer within 10 s"
    else:
        server, fillers = socket.socket(), []
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the TCP handshake completes; no CONNACK ever comes
        expected = "no MQTT answer within 10 s"
    try:
        start = time.monotonic()
        proc = cli("watch", "--port", str(server.getsockname()[1]), timeout=60)
        elapsed = time.monotonic() - start
    finally:
        for sock in [server, *fillers]:
            sock.close()
    line = error_line(proc)
    assert expected in line, line
    assert 9 <= elapsed < 40, elapsed
    print(f"\n{line} ({elapsed:.1f} s)")


@pytest.fixture(scope="module")
def auth_broker() -> Iterator[Broker]:
    """A mosquitto that wants a password; `watcher` may read edge/# only."""
    folder = Path(tempfile.mkdtemp(prefix="edge-agent-watch-auth-"))
    folder.chmod(0o755)  # mosquitto drops to its own user
    passwd, acl = folder / "passwd", folder / "acl"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "watcher", PASSWORD], check=True)
    acl.write_text("user watcher\ntopic read edge/#\ntopic write edge/#\n")
    for f in (passwd, acl):
        f.chmod(0o644)
    broker = Broker(extra_conf=f"password_file {passwd}\nacl_file {acl}\n")
    broker.conf.write_text(
        broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    )
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_watch_password_required_through_cli(auth_broker: Broker) -> None:
    proc = cli("watch", "--port", str(auth_broker.port), "--timeout", "5", timeout=60)
    line = error_line(proc)
    assert f"broker 127.0.0.1:{auth_broker.port}" in line
    assert "not authorized" in line
    assert "--username" in line and "--password-env" in line
    print(f"\n{line}")


def _watch_args(*argv: str) -> argparse.Namespace:
    """The `watch` options as the CLI defines them (add_watch_arguments)."""
    parser = argparse.ArgumentParser()
    add_watch_arguments(parser)
    return parser.parse_args(list(argv))


AUTH_CASES: list[tuple[str, list[str], dict[str, str], str]] = [
    (
        "wrong password",
        ["--username", "watcher", "--password-env", "WATCH_PW"],
        {"WATCH_PW": "wrong"},
        "not authorized (check --username and the password in $WATCH_PW)",
    ),
    (
        "password variable unset",
        ["--username", "watcher", "--password-env", "WATCH_PW_UNSET"],
        {},
        "--password-env: environment variable WATCH_PW_UNSET is not set",
    ),
    (
        "password without user",
        ["--password-env", "WATCH_PW"],
        {"WATCH_PW": PASSWORD},
        "--password-env: a password needs a user name: add --username",
    ),
]


@pytest.mark.parametrize(
    ("argv", "env", "message"), [c[1:] for c in AUTH_CASES], ids=[c[0] for c in AUTH_CASES]
)
def test_watch_login_mistakes(
    auth_broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = _watch_args("--port", str(auth_broker.port), "--timeout", "3", *argv)
    with pytest.raises(UserError) as caught:
        run(args)
    assert message in str(caught.value), str(caught.value)
    print(f"\nedge-agent: error: {caught.value}")


def test_watch_with_password_receives(
    auth_broker: Broker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    auth: Any = {"username": "watcher", "password": PASSWORD}  # paho's TypedDict
    publish.single(
        "edge/pw-1/status", "online", qos=1, retain=True, port=auth_broker.port, auth=auth
    )
    monkeypatch.setenv("WATCH_PW", PASSWORD)
    args = _watch_args(
        *["--port", str(auth_broker.port), "--username", "watcher", "--password-env", "WATCH_PW"],
        *["--topic", "edge/pw-1/#", "--count", "1", "--timeout", "20"],
    )
    assert run(args) == 0
    assert "edge/pw-1/status: online (retained)" in capsys.readouterr().out


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[tuple[Broker, int, Path]]:
    """A mosquitto with a TLS listener (server cert for 127.0.0.1) and a rogue CA beside it."""
    folder = Path(tempfile.mkdtemp(prefix="edge-agent-watch-pki-"))
    folder.chmod(0o755)
    for ca in ("ca", "rogue-ca"):
        _openssl(
            folder,
            *["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}"],
            *["-keyout", f"{ca}.key", "-out", f"{ca}.crt"],
        )
    _openssl(
        folder,
        *["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=server"],
        *["-keyout", "server.key", "-out", "server.csr"],
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        folder,
        *["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"],
        *["-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt"],
    )
    for f in folder.iterdir():
        f.chmod(0o644)
    tls_port = free_port()
    broker = Broker(
        extra_conf=f"listener {tls_port} 127.0.0.1\ncafile {folder}/ca.crt\n"
        f"certfile {folder}/server.crt\nkeyfile {folder}/server.key\n"
    ).start()
    yield broker, tls_port, folder
    broker.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_watch_plain_client_on_tls_port(tls_broker: tuple[Broker, int, Path]) -> None:
    _, tls_port, _ = tls_broker
    proc = cli("watch", "--port", str(tls_port), "--timeout", "5", timeout=60)
    line = error_line(proc)
    assert f"broker 127.0.0.1:{tls_port}" in line
    assert "closed the connection before accepting it" in line and "--tls" in line
    print(f"\n{line}")


TLS_CASES: list[tuple[str, list[str], str]] = [
    ("system CA store", ["--tls"], "TLS certificate not trusted"),
    ("rogue CA", ["--cafile", "{pki}/rogue-ca.crt"], "TLS certificate not trusted"),
    (
        "CA file missing",
        ["--cafile", "{pki}/nope.crt"],
        "--cafile {pki}/nope.crt: CA certificate not found",
    ),
    ("CA file not PEM", ["--cafile", "{pki}/san.ext"], "not a readable PEM CA certificate"),
    (
        "TLS on a plain port",
        ["--cafile", "{pki}/ca.crt", "--port", "{plain}"],
        "TLS handshake failed",
    ),
]


@pytest.mark.parametrize(
    ("argv", "message"), [c[1:] for c in TLS_CASES], ids=[c[0] for c in TLS_CASES]
)
def test_watch_tls_mistakes(
    tls_broker: tuple[Broker, int, Path], argv: list[str], message: str
) -> None:
    broker, tls_port, pki = tls_broker
    values = {"pki": pki, "plain": broker.port}
    args = _watch_args(
        "--port", str(tls_port), "--timeout", "3", *(a.format(**values) for a in argv)
    )
    with pytest.raises(UserError) as caught:
        run(args)
    assert message.format(**values) in str(caught.value), str(caught.value)
    print(f"\nedge-agent: error: {caught.value}")


def test_watch_with_tls_receives(
    tls_broker: tuple[Broker, int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    broker, tls_port, pki = tls_broker
    publish.single("edge/tls-1/status", "online", qos=1, retain=True, port=broker.port)
    args = _watch_args(
        *["--port", str(tls_port), "--cafile", str(pki / "ca.crt")],
        *["--topic", "edge/tls-1/#", "--count", "1", "--timeout", "20"],
    )
    assert run(args) == 0
    assert "edge/tls-1/status: online (retained)" in capsys.readouterr().out


def _sigint_default() -> None:
    # A foreground process on a terminal: a suite started as a background job of a
    # non-interactive shell has SIGINT ignored, and children inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_watch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=_sigint_default,
    )


def test_watch_ctrl_c_while_printing(broker: Broker) -> None:
    publish.single("edge/ctrl-c/status", "online", qos=1, retain=True, port=broker.port)
    proc = _start_watch("--port", str(broker.port), "--topic", "edge/ctrl-c/#")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until watch is connected and printing
        assert first.startswith("edge/ctrl-c/status: online"), first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err == "", err


def test_watch_ctrl_c_while_connecting() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(30)
    proc = _start_watch("--port", str(server.getsockname()[1]))
    try:
        conn, _ = server.accept()  # watch is now waiting for a CONNACK that never comes
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        conn.close()
    finally:
        proc.kill()
        server.close()
    assert proc.returncode == 130, err
    assert err == "", err


def test_watch_prints_and_counts(broker: Broker) -> None:
    publish.single("edge/count-1/status", "online", qos=1, retain=True, port=broker.port)
    proc = cli("watch", "--port", str(broker.port), "--topic", "edge/count-1/#", "--count", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "edge/count-1/status: online (retained)\n"
