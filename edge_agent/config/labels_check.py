"""Labels named in a config (objects, zones, lines, classify, samples) against the model's."""

from __future__ import annotations

import difflib

from edge_agent.camera.objects import ANY
from edge_agent.config.loader import LoadedConfig
from edge_agent.errors import ConfigError


def check_labels(loaded: LoadedConfig, known: list[str]) -> None:
    """Every label the config names is one of the model's: else a located error with the
    closest label."""
    for name, cam in loaded.config.cameras.items():
        # (key path under the camera, label) for every label the config names
        named: list[tuple[tuple[str | int, ...], str]] = []
        if cam.detect is not None:
            labels = enumerate(cam.detect.labels or [])
            named += [(("detect", "labels", i), lab) for i, lab in labels]
            named += [(("detect", "per_label", lab), lab) for lab in cam.detect.per_label]
        named += [(("objects", lab), lab) for lab in cam.objects if lab != ANY]
        for section, items in (("zones", cam.zones), ("lines", cam.lines)):
            for item_name, item in items.items():
                labels = enumerate(item.labels or [])
                named += [((section, item_name, "labels", i), lab) for i, lab in labels]
        if cam.classify is not None:
            named += [
                (("classify", "on_labels", i), lab)
                for i, lab in enumerate(cam.classify.on_labels or [])
            ]
        rare = cam.samples.strategies.rare_class
        if cam.samples.enabled and rare is not None:
            key = ("samples", "strategies", "rare_class", "labels")
            named += [((*key, i), lab) for i, lab in enumerate(rare.labels)]
        for path, label in named:
            if label in known:
                continue
            close = difflib.get_close_matches(label, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"label {label!r} is not one of the model's {len(known)} labels{hint}",
                where=loaded.where("cameras", name, *path),
            )
