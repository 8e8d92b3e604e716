"""Which config and checkpoint a model name means, and the version written into results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autolabel.errors import ConfigError
from autolabel.serving import config_names
from autolabel.settings import Settings
from autolabel.storage import parse_s3_uri
from autolabel_worker.fetch import fetch_checkpoint, sha256_file

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"
REPO_CONFIGS_DIR = PACKAGE_DIR.parents[1] / "configs"
CHECKPOINT_CACHE = Path.home() / ".cache" / "autolabel" / "checkpoints"


@dataclass(frozen=True)
class ModelFiles:
    name: str
    config: Path
    checkpoint: Path
    version: str


def file_digest(path: Path) -> str:
    """Short content hash: results name the exact weights that produced them."""
    return sha256_file(path)[:12]


def _fetch_checkpoint(uri: str, settings: Settings) -> Path:
    # Every process of a pool resolves the model at once: fetch_checkpoint's lock makes one download it.
    bucket, key = parse_s3_uri(uri)
    return fetch_checkpoint(uri, (CHECKPOINT_CACHE / bucket / key).parent, settings)


def resolve_model(settings: Settings) -> ModelFiles:
    configs = Path(settings.configs_dir) if settings.configs_dir else REPO_CONFIGS_DIR
    config = configs / f"{settings.model}.py"
    if not config.is_file():
        known = ", ".join(config_names(configs)) or "none"
        raise ConfigError(f"no config for model {settings.model!r} in {configs}; known models: {known}")
    if settings.checkpoint is None:
        checkpoint = WEIGHTS_DIR / f"{settings.model}.pth"
        if not checkpoint.is_file():
            raise ConfigError(f"model {settings.model!r} ships no weights; set AUTOLABEL_CHECKPOINT "
                              "to its checkpoint file or s3:// URI")
    elif settings.checkpoint.startswith("s3://"):
        checkpoint = _fetch_checkpoint(settings.checkpoint, settings)
    else:
        checkpoint = Path(settings.checkpoint)
        if not checkpoint.is_file():
            raise ConfigError(f"AUTOLABEL_CHECKPOINT={checkpoint} does not exist")
    return ModelFiles(settings.model, config, checkpoint, file_digest(checkpoint))
