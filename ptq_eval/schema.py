"""The base of every schema a user writes (studies, evals, policies, ladder configs): unknown keys refused,
values frozen once validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
