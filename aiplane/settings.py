"""Process settings, read from AIPLANE_* environment variables (flags override them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

ENV_PREFIX = "AIPLANE_"


class Settings(BaseModel):
    """What every aiplane process needs to know about where it runs."""

    data_dir: Path = Field(default=Path(".run/dev"), description="Where SQLite, blobs and logs live.")
    port: int = Field(default=8080, ge=1, le=65535, description="Gateway port.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values = {name: env[ENV_PREFIX + name.upper()] for name in cls.model_fields if ENV_PREFIX + name.upper() in env}
        return cls.model_validate(values)
