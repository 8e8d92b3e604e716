"""The exceptions autolabel raises on purpose; each message says what to do about it."""

from __future__ import annotations


class AutolabelError(Exception):
    """Base class: catch this to handle every failure autolabel reports deliberately."""


class ConfigError(AutolabelError):
    """A setting is missing or has a value that cannot work."""


class SettingsError(ConfigError):
    """Settings were refused: ``problems`` holds (variable name, reason) pairs; values are never shown."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in problems))


class InvalidInputError(AutolabelError, ValueError):
    """Input (a payload, a job id, a video, a frame) was refused; the message names the field."""


class StorageError(AutolabelError):
    """The object store refused or failed a request."""


class ObjectNotFoundError(StorageError):
    """An object the job needs is not in the bucket."""


class BucketNotFoundError(StorageError):
    """The bucket itself does not exist: a setup step, not a missing object (every write would fail)."""


class BrokerError(AutolabelError):
    """Redis (the Celery broker and the progress store) does not answer; transient once it is back."""


class SubmitError(AutolabelError):
    """A submit failed after it had written to the bucket; the message names the job id and its prefix."""


class NoWorkerError(AutolabelError):
    """No live worker has served a job's model for AUTOLABEL_NO_WORKER_TIMEOUT_S; the job stays queued."""


class JobNotFoundError(AutolabelError):
    """No job with that id is known to the broker or the object store."""


class FrameError(AutolabelError):
    """One frame cannot be processed (missing, empty, corrupt, too large); the job goes on."""


class CheckpointError(AutolabelError):
    """A model checkpoint cannot be read or does not fit its config."""
