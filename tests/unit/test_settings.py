import pytest
from pydantic import ValidationError

from cogserve.settings import SAMPLING_DEFAULTS, Settings


def test_env_vars_reach_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGSERVE_SERVER__PORT", "9123")
    monkeypatch.setenv("COGSERVE_MODEL__HD_STEPS", "40")
    monkeypatch.setenv("COGSERVE_STORAGE__IMAGE_TTL_DAYS", "7")
    settings = Settings()
    assert settings.server.port == 9123
    assert settings.model.hd_steps == 40
    assert settings.storage.image_ttl_days == 7


def test_explicit_values_beat_env_and_keep_other_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGSERVE_SERVER__PORT", "9123")
    monkeypatch.setenv("COGSERVE_SERVER__HOST", "0.0.0.0")
    settings = Settings(server={"port": 8001})
    assert settings.server.port == 8001
    assert settings.server.host == "0.0.0.0"


def test_defaults_follow_the_issue() -> None:
    settings = Settings(model={"path": "/models/CogView4-6B"})
    assert settings.model.standard_steps == 20
    assert settings.model.hd_steps == 50
    assert settings.model.guidance_scale == 3.5
    assert settings.model.codes == ["cogview-4", "cogview-4-250304"]
    assert settings.storage.image_ttl_days == 30
    assert settings.model.allow_download is False


def test_each_model_has_its_own_sampling_defaults_and_settings_win() -> None:
    tiny = Settings().model
    assert (tiny.builtin, tiny.model_family) == ("tiny-random", "tiny-random")
    assert (tiny.standard_steps, tiny.hd_steps, tiny.guidance_scale) == (20, 50, 3.5)
    shapes = Settings(model={"builtin": "shapes"}).model
    assert (shapes.standard_steps, shapes.hd_steps, shapes.guidance_scale) == SAMPLING_DEFAULTS["shapes"]
    given = Settings(model={"builtin": "shapes", "standard_steps": 5, "guidance_scale": 1.0}).model
    assert (given.standard_steps, given.hd_steps, given.guidance_scale) == (
        5,
        SAMPLING_DEFAULTS["shapes"][1],
        1.0,
    )


@pytest.mark.parametrize("value", ["fp16", "float16", "FP16"])
def test_fp16_is_refused_with_the_reason(value: str) -> None:
    with pytest.raises(ValidationError, match="overflows in float16"):
        Settings(model={"dtype": value})


def test_public_url_must_be_http_and_loses_trailing_slash() -> None:
    assert Settings(server={"public_url": "https://img.example.com/"}).server.public_url == (
        "https://img.example.com"
    )
    with pytest.raises(ValidationError, match="http"):
        Settings(server={"public_url": "ftp://x"})


def test_database_defaults_to_sqlite_in_data_dir(tmp_path) -> None:
    settings = Settings(storage={"data_dir": tmp_path})
    assert settings.database_url == f"sqlite:///{tmp_path / 'cogserve.db'}"
    assert settings.builtin_model_dir == tmp_path / "models"


def test_list_settings_take_comma_separated_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGSERVE_MODEL__WARMUP_SIZES", "512x512:2,1024x1024")
    monkeypatch.setenv("COGSERVE_JOBS__WEBHOOK_ALLOW", "a.example, B.example:8443")
    monkeypatch.setenv("COGSERVE_SERVER__FORWARDED_ALLOW_IPS", "10.0.0.1,10.0.0.2")
    settings = Settings()
    assert settings.model.warmup_sizes == ["512x512:2", "1024x1024"]
    assert settings.jobs.webhook_allow == ["a.example", "b.example:8443"]
    assert settings.server.forwarded_allow_ips == ["10.0.0.1", "10.0.0.2"]


def test_the_enhancer_is_off_by_default_and_takes_its_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().enhancer.url is None
    monkeypatch.setenv("COGSERVE_ENHANCER__URL", "https://open.bigmodel.cn/api/paas/v4/chat/completions")
    monkeypatch.setenv("COGSERVE_ENHANCER__API_KEY", "sk-env")
    enhancer = Settings().enhancer
    # A pasted endpoint URL is taken back to the API's base, where /chat/completions is added.
    assert enhancer.url == "https://open.bigmodel.cn/api/paas/v4"
    assert enhancer.api_key is not None and enhancer.api_key.get_secret_value() == "sk-env"
    assert "sk-env" not in repr(enhancer)


@pytest.mark.parametrize(
    ("field", "value"), [("url", "open.bigmodel.cn"), ("mode", "sometimes"), ("timeout_s", 0)]
)
def test_bad_enhancer_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(enhancer={field: value})
