from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from autolabel.errors import SettingsError
from autolabel.settings import MASK, Settings, get_settings, mask_url_password


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


@pytest.mark.parametrize(("variable", "value"), [("AUTOLABEL_LOG_FORMAT", "xml"), ("AUTOLABEL_TORCH_THREADS", "0")])
def test_a_bad_environment_value_is_refused_by_its_variable(variable: str, value: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match=variable):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_secret_files_are_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "autolabel_s3_secret_access_key").write_text("from-a-file\n")
    (tmp_path / "autolabel_broker_url").write_text("rediss://:pw@cache:6380/0")
    monkeypatch.setenv("AUTOLABEL_SECRETS_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.s3_secret_access_key.get_secret_value() == "from-a-file"
        assert settings.broker_url == "rediss://:pw@cache:6380/0"
        assert "from-a-file" not in repr(settings) and "pw@" not in repr(settings)
        monkeypatch.setenv("AUTOLABEL_BROKER_URL", "redis://env:6379/0")
        get_settings.cache_clear()
        assert get_settings().broker_url == "redis://env:6379/0"
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("field", ["batch_time_limit_s", "lease_s"])
def test_delivery_limits_stay_below_the_visibility_timeout(field: str) -> None:
    with pytest.raises(ValidationError, match=f"AUTOLABEL_{field.upper()} must be below AUTOLABEL_VISIBILITY_TIMEOUT_S"):
        Settings(_env_file=None, **{"visibility_timeout_s": 60, "batch_time_limit_s": 30, "lease_s": 10, field: 60})
