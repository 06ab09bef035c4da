"""Base class for every config model: strict (unknown keys are errors), plain data."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section. Unknown keys and wrong types fail validation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
