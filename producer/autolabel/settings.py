"""The one settings object, read from ``AUTOLABEL_*`` environment variables and ``.env``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MASK = "********"


class Settings(BaseSettings):
    """Everything a producer or a worker needs to find the broker, the store and the model."""

    model_config = SettingsConfigDict(env_prefix="AUTOLABEL_", env_file=".env", extra="ignore")

    broker_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Celery broker and progress store (redis:// or rediss://, password in the URL)",
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint; None means AWS")
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    bucket: str = "autolabel"
    model: str = Field("shapes-rtmdet-tiny", description="model name: a config name in the configs directory")
    checkpoint: str | None = Field(None, description="checkpoint path or s3:// URI; default: the model's own")
    configs_dir: str | None = Field(None, description="directory of model configs; default: the repo's configs/")
    batch_size: int = Field(4, ge=1, le=64)
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    max_frame_pixels: int = Field(40_000_000, ge=1, description="frames larger than this are refused unread")
    frame_fetch_threads: int = Field(8, ge=1, le=64)
    ready_file: str | None = Field(None, description="a worker process writes this file once it can take work")

    @field_validator("broker_url")
    @classmethod
    def _redis_only(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("broker_url must be a redis://, rediss:// or unix:// URL")
        return value

    def __repr_args__(self) -> list[tuple[str, Any]]:
        # Settings end up in logs and tracebacks; the broker URL can hold a password.
        return list(self.masked().items())

    def masked(self) -> dict[str, Any]:
        """The effective settings, fit to print: secrets and URL passwords are masked."""
        shown: dict[str, Any] = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                shown[name] = MASK if value.get_secret_value() else ""
            elif name == "broker_url":
                shown[name] = mask_url_password(value)
            else:
                shown[name] = value
        return shown


def mask_url_password(url: str) -> str:
    """``redis://:secret@host`` becomes ``redis://:********@host``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
