"""The base of every config section. Kept apart from schema.py so that component modules
(camera steps, the tracker) can define their own sections and schema.py can compose them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable and finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
