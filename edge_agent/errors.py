"""Errors that are the user's to fix: reported as one located line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with input the user controls (config, model file, media)."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ConfigError(UserError):
    """The configuration file is malformed or invalid."""


class ModelError(UserError):
    """The model file or its labels cannot be used."""


class SourceError(UserError):
    """A camera or replay source cannot be opened or read."""


class RuntimeMissingError(UserError):
    """No TFLite interpreter package is installed."""


class CameraUnavailable(Exception):
    """A camera that exists in the config cannot deliver frames right now (device missing,
    stream down, no frame within `frame_timeout`). Not a user error: the supervisor retries
    with backoff while the other cameras run on."""
