#!/usr/bin/env python3
"""Fetch the model binaries listed in models/manifest.json and verify their sha256.

scripts/fetch_models.py --from ../shared/models   # copy from a local folder
scripts/fetch_models.py                           # download from the manifest URLs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import urllib.request
from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "models"


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_one(rel: str, entry: dict[str, str], source: Path | None) -> str:
    """Place one model at models/<rel>; returns a status word."""
    target = MODELS / rel
    if target.is_file() and sha256(target) == entry["sha256"]:
        return "present"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    if source is not None:
        origin = source / rel
        if not origin.is_file():
            raise SystemExit(f"fetch_models: {origin} not found")
        shutil.copyfile(origin, tmp)
    else:
        url = entry["url"]
        if not url.startswith("https://"):
            raise SystemExit(f"fetch_models: refusing non-https URL {url}")
        with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as out:  # noqa: S310
            shutil.copyfileobj(resp, out)
    got = sha256(tmp)
    if got != entry["sha256"]:
        tmp.unlink()
        raise SystemExit(f"fetch_models: {rel}: sha256 {got} does not match {entry['sha256']}")
    tmp.replace(target)
    return "copied" if source is not None else "downloaded"


def main() -> int:
    """Fetch every model (or the ones named) and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--from", dest="source", type=Path, help="local folder with the same layout"
    )
    parser.add_argument("only", nargs="*", help="model paths to fetch (default: all)")
    args = parser.parse_args()
    manifest = json.loads((MODELS / "manifest.json").read_text())["models"]
    for rel, entry in manifest.items():
        if args.only and rel not in args.only and rel.split("/")[0] not in args.only:
            continue
        print(f"{fetch_one(rel, entry, args.source):>10}  models/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
