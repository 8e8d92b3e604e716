"""The one settings object, read from ``AUTOLABEL_*`` environment variables and ``.env``."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
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
    fp16: bool = Field(False, description="fp16 autocast on CUDA (not bf16: mmcv's deformable attention has no "
                       "bf16 kernel); ignored on CPU")
    plugin_dirs: str = Field("", description="directories (os.pathsep-separated) put on sys.path before a model "
                             "config is read, so its custom_imports can name modules in them")
    max_frame_pixels: int = Field(40_000_000, ge=1, description="frames larger than this are refused unread")
    frame_fetch_threads: int = Field(8, ge=1, le=64, description="concurrent frame fetches per task")
    worker_threads: int = Field(8, ge=1, le=64, description="tasks in flight per worker process (Celery's threads "
                                "pool); their frames share forward passes")
    ready_file: str | None = Field(None, description="a worker process writes this file once it can take work")
    # Delivery (docs/reliability.md says which failure each one addresses).
    visibility_timeout_s: int = Field(3600, ge=2, description="Redis redelivers an unacknowledged message after this")
    batch_time_limit_s: float = Field(1800, gt=0, description="a task's wait for its forward passes; below the "
                                      "visibility timeout")
    lease_s: float = Field(60, gt=0, description="a running task's lease in Redis, renewed every third of it")
    max_deliveries: int = Field(3, ge=1, description="deliveries lost (worker killed) before a task is dead-lettered")

    @field_validator("broker_url")
    @classmethod
    def _redis_only(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("broker_url must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _limits_below_visibility(self) -> Settings:
        # A task running longer than the visibility timeout, or a copy held back longer, is redelivered.
        for name in ("batch_time_limit_s", "lease_s"):
            if getattr(self, name) >= self.visibility_timeout_s:
                raise ValueError(f"{name} ({getattr(self, name)}) must be below visibility_timeout_s "
                                 f"({self.visibility_timeout_s}), or a running task is delivered again")
        return self

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
    """The process-wide settings, read once from the environment.

    ``AUTOLABEL_SECRETS_DIR`` names a directory of secret files (Docker/Kubernetes secrets), one per
    setting: ``autolabel_s3_secret_access_key``, ``autolabel_broker_url``, ...; the environment wins.
    """
    return Settings(_secrets_dir=os.environ.get("AUTOLABEL_SECRETS_DIR"))
