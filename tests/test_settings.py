from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from autolabel.settings import MASK, Settings, mask_url_password


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOLABEL_BATCH_SIZE", "8")
    monkeypatch.setenv("AUTOLABEL_BUCKET", "frames")
    monkeypatch.setenv("BATCH_SIZE", "99")
    settings = Settings(_env_file=None)
    assert settings.batch_size == 8
    assert settings.bucket == "frames"


def test_reads_dotenv_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("AUTOLABEL_DEVICE=cuda:1\nAUTOLABEL_MODEL=co-dino-5scale-swin-l\n")
    settings = Settings(_env_file=env_file)
    assert settings.device == "cuda:1"
    assert settings.model == "co-dino-5scale-swin-l"


def test_secrets_never_appear_in_output() -> None:
    settings = Settings(
        _env_file=None,
        s3_access_key_id="AKIAEXAMPLEKEY",
        s3_secret_access_key="very-secret-value",
        broker_url="redis://:redis-password@cache:6379/0",
    )
    shown = settings.masked()
    text = repr(settings) + str(shown)
    for secret in ("AKIAEXAMPLEKEY", "very-secret-value", "redis-password"):
        assert secret not in text
    assert shown["s3_secret_access_key"] == MASK
    assert shown["broker_url"] == f"redis://:{MASK}@cache:6379/0"


def test_url_without_password_is_unchanged() -> None:
    assert mask_url_password("redis://cache:6379/0") == "redis://cache:6379/0"
    assert mask_url_password("rediss://user:pw@cache:6380/1") == f"rediss://user:{MASK}@cache:6380/1"


@pytest.mark.parametrize(("field", "value"), [("broker_url", "amqp://guest@rabbit//"), ("batch_size", "0")])
def test_bad_values_name_the_field(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None, **{field: value})
