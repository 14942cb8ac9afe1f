"""The base of every settings section: unknown keys refused, every field documented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A `[section]` of the configuration; each field's docstring is its description
    (docs/configuration.md is generated from them)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)
