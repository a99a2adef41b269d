"""`edge-agent schema` (the config's JSON Schema for editors) and `check-config`'s look at the
files a config names and at the model's labels (`--offline` skips both)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers import IMAGES, ROOT, SSD, SSD_LABELS, VIDEO, base_config, cli, write_config

SCHEMA_FILE = ROOT / "schemas" / "config.schema.json"


def test_schema_command_matches_the_committed_schema() -> None:
    proc = cli("schema")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    jsonschema.Draft202012Validator.check_schema(printed)
    assert printed == json.loads(SCHEMA_FILE.read_text()), (
        "schemas/config.schema.json is stale: run `edge-agent schema > schemas/config.schema.json`"
    )


@pytest.mark.parametrize("example", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_point_editors_at_the_schema_and_satisfy_it(example: Path) -> None:
    text = example.read_text()
    assert text.startswith("# yaml-language-server: $schema=../schemas/config.schema.json\n")
    schema = json.loads(SCHEMA_FILE.read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(text)))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


# (case, how the config is changed, {key path: message regex} every one of which is reported)
BROKEN: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    (
        "missing model and source",
        {"model": {"path": "/nonexistent/m.tflite"}, "source": "/nonexistent/clip.mp4"},
        {
            "model.path": r"m\.tflite: not found",
            "cameras.door.source.path": r"clip\.mp4: not found",
        },
    ),
    (
        "outbox folder absent",
        {"outbox": "/nonexistent/dir/o.db"},
        {"outbox.path": r"folder /nonexistent/dir does not exist"},
    ),
    (
        "label not in the model",
        {"objects": {"persn": {"min_score": 0.5}}},
        {"cameras.door.objects.persn": r"not one of the model's 90 labels .*'person'"},
    ),
    (
        "not a model",
        {"model": {"path": str(SSD_LABELS)}},
        {"model.path": r"not a TFLite model"},
    ),
]


def _config(tmp_path: Path, change: dict[str, Any]) -> Path:
    cfg = base_config(
        1883, SSD, SSD_LABELS, {"door": {"source": {"type": "video", "path": str(VIDEO)}}}
    )
    if "model" in change:
        cfg["model"] = change["model"]
    if "source" in change:
        cfg["cameras"]["door"]["source"]["path"] = change["source"]
    if "outbox" in change:
        cfg["outbox"] = {"path": change["outbox"]}
    if "objects" in change:
        cfg["cameras"]["door"]["objects"] = change["objects"]
    return write_config(tmp_path, cfg)


@pytest.mark.parametrize(
    ("change", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_check_config_reports_every_problem_on_disk_located(
    tmp_path: Path, change: dict[str, Any], expected: dict[str, str]
) -> None:
    path = _config(tmp_path, change)
    proc = cli("check-config", str(path), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge-agent: error:")]
    assert len(errors) == len(expected), proc.stderr
    for key, pattern in expected.items():
        line = next((e for e in errors if f": {key}: " in e), "")
        assert re.search(rf"{re.escape(str(path))}:\d+: {re.escape(key)}: .*{pattern}", line), (
            key,
            proc.stderr,
        )
    offline = cli("check-config", "--offline", str(path), timeout=120)
    assert offline.returncode == 0 and "OK" in offline.stdout, offline.stderr


def test_check_config_passes_a_config_whose_files_and_labels_are_right(tmp_path: Path) -> None:
    cfg = base_config(
        1883,
        SSD,
        SSD_LABELS,
        {"door": {"source": {"type": "images", "path": str(IMAGES)}, "objects": {"person": {}}}},
    )
    proc = cli("check-config", str(write_config(tmp_path, cfg)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "files present, model loads, labels match" in proc.stdout
