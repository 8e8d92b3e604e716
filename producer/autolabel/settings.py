"""The one settings object, read from ``AUTOLABEL_*`` environment variables and ``.env``."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from autolabel.errors import SettingsError

MASK = "********"


class Settings(BaseSettings):
    """Everything a producer or a worker needs to find the broker, the store and the model."""

    # hide_input_in_errors: a value refused by a validator can be a password (a broker URL with one
    # in it, a secret pasted into the wrong variable); errors name the setting and the reason only.
    model_config = SettingsConfigDict(env_prefix="AUTOLABEL_", env_file=".env", extra="ignore",
                                      hide_input_in_errors=True)

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
    torch_threads: int | None = Field(None, ge=1, le=256, description="threads of the model's forward pass on CPU "
                                      "(torch.set_num_threads); default: torch's, one per core. Cap it below the "
                                      "cores so fetch, decode and upload keep a core of their own")
    plugin_dirs: str = Field("", description="directories (os.pathsep-separated) put on sys.path before a model "
                             "config is read, so its custom_imports can name modules in them")
    max_frame_pixels: int = Field(40_000_000, ge=1, description="frames larger than this are refused unread")
    frame_fetch_threads: int = Field(8, ge=1, le=64, description="concurrent frame fetches per task")
    worker_threads: int = Field(8, ge=1, le=64, description="tasks in flight per worker process (Celery's threads "
                                "pool); their frames share forward passes")
    ready_file: str | None = Field(None, description="a worker process writes this file once it can take work")
    health_host: str = Field("0.0.0.0", description="address the worker launcher's /ready and /live listen on; "
                             "all interfaces, as the kubelet probes the pod's IP")
    exporter_host: str = Field("0.0.0.0", description="address `autolabel exporter` serves /metrics on; all "
                               "interfaces, as Prometheus scrapes the pod's IP")
    exporter_port: int = Field(9464, ge=1, le=65535, description="port of `autolabel exporter`'s /metrics")
    restart_reset_s: float = Field(60, gt=0, description="a worker process that ran this long before it died is "
                                   "restarted after 1 s again, not after the backoff its earlier deaths built up")
    gpu_replicas: int = Field(1, ge=1, le=48, description="pods sharing each card under NVIDIA time-slicing (the "
                              "device plugin's replicas): a pod sees the whole card, so --procs-per-device auto "
                              "sizes for 1/N of its memory, or the pods together run out of it")
    log_format: Literal["text", "json"] = Field("text", description="text: lines for a terminal; json: one JSON "
                                                "object per line (launcher, worker processes, Celery) for a "
                                                "log collector")
    # Delivery (docs/reliability.md says which failure each one addresses).
    visibility_timeout_s: int = Field(3600, ge=2, description="Redis redelivers an unacknowledged message after this")
    batch_time_limit_s: float = Field(1800, gt=0, description="a task's wait for its forward passes; below the "
                                      "visibility timeout")
    lease_s: float = Field(60, gt=0, description="a running task's lease in Redis, renewed every third of it")
    max_deliveries: int = Field(3, ge=1, description="deliveries lost (worker killed) before a task is dead-lettered")
    max_retries: int = Field(8, ge=0, description="retries of a task after a transient failure (object store, Redis, "
                             "batch time limit) before its frames fail with the reason")
    retry_backoff_max_s: int = Field(120, ge=1, description="longest wait before a retry (the wait doubles from 2 s, "
                                     "with jitter); keep it below the visibility timeout")
    no_worker_timeout_s: float = Field(300, gt=0, description="waiting on a job (--wait, LabelingClient.wait) stops "
                                       "with an error once no live worker has served its model for this long")

    @field_validator("broker_url")
    @classmethod
    def _redis_only(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _limits_below_visibility(self) -> Settings:
        # A task running longer than the visibility timeout, or a copy held back longer, is redelivered.
        for name in ("batch_time_limit_s", "lease_s"):
            if getattr(self, name) >= self.visibility_timeout_s:
                raise ValueError(f"AUTOLABEL_{name.upper()} must be below AUTOLABEL_VISIBILITY_TIMEOUT_S, "
                                 "or a running task is delivered again")
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
    try:
        return Settings(_secrets_dir=os.environ.get("AUTOLABEL_SECRETS_DIR"))
    except ValidationError as exc:
        raise _settings_error(exc) from None


def _settings_error(exc: ValidationError) -> SettingsError:
    """Each refused setting by its variable name and the reason, never its value (it can be a secret).

    ``from None`` at the raise: the ValidationError's own text stays out of tracebacks and logs.
    """
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        # A field's error is located at the field; a check across fields (model validator) at none,
        # and its message names the settings itself.
        name = f"AUTOLABEL_{str(error['loc'][0]).upper()}" if error["loc"] else "settings"
        problems.append((name, str(error["msg"]).removeprefix("Value error, ")))
    return SettingsError(problems)
