import pytest
from pydantic import ValidationError

from cogserve.api.protocol import ImageGenerationRequest, validation_error
from cogserve.errors import InvalidField, MissingField, PromptTooLong, UnknownModel
from cogserve.settings import ModelSettings

BASE = {"model": "cogview-4", "prompt": "a cat"}


def test_null_is_the_same_as_absent() -> None:
    with_nulls = ImageGenerationRequest.model_validate(
        {
            **BASE,
            "size": None,
            "quality": None,
            "user_id": None,
            "n": None,
            "seed": None,
            "response_format": None,
            "request_id": None,
            "watermark_enabled": None,
        }
    )
    assert with_nulls == ImageGenerationRequest.model_validate(BASE)
    assert with_nulls.size == "1024x1024"
    assert with_nulls.quality == "standard"


def test_null_required_field_is_missing() -> None:
    with pytest.raises(ValidationError) as info:
        ImageGenerationRequest.model_validate({"model": None, "prompt": "x"})
    error = validation_error(info.value)
    assert isinstance(error, MissingField)
    assert error.code == "1213" and "model" in error.message


def test_unknown_fields_from_extra_body_are_ignored() -> None:
    request = ImageGenerationRequest.model_validate({**BASE, "foo": {"bar": 1}})
    assert not hasattr(request, "foo")


def test_quality_maps_to_configured_steps_and_guidance() -> None:
    settings = ModelSettings(standard_steps=7, hd_steps=11, guidance_scale=4.5)
    standard = ImageGenerationRequest.model_validate(BASE).to_request(settings, "r1")
    hd = ImageGenerationRequest.model_validate({**BASE, "quality": "hd"}).to_request(settings, "r1")
    assert (standard.params.steps, hd.params.steps) == (7, 11)
    assert standard.params.guidance_scale == 4.5
    assert (standard.params.width, standard.params.height) == (1024, 1024)


def test_seed_is_kept_or_drawn() -> None:
    settings = ModelSettings()
    request = ImageGenerationRequest.model_validate({**BASE, "seed": 42}).to_request(settings, "r")
    assert request.params.seed == 42
    drawn = {
        ImageGenerationRequest.model_validate(BASE).to_request(settings, "r").params.seed for _ in range(5)
    }
    assert len(drawn) > 1


def test_model_codes_are_configurable_aliases() -> None:
    settings = ModelSettings(codes=["my-cogview"])
    assert ImageGenerationRequest.model_validate({**BASE, "model": "my-cogview"}).to_request(settings, "r")
    with pytest.raises(UnknownModel, match="my-cogview"):
        ImageGenerationRequest.model_validate(BASE).to_request(settings, "r")


def test_prompt_limit_is_in_characters() -> None:
    settings = ModelSettings(max_prompt_chars=10)
    assert ImageGenerationRequest.model_validate({**BASE, "prompt": "猫" * 10}).to_request(settings, "r")
    with pytest.raises(PromptTooLong) as info:
        ImageGenerationRequest.model_validate({**BASE, "prompt": "猫" * 11}).to_request(settings, "r")
    assert info.value.code == "1261"


def test_strict_types_name_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        ImageGenerationRequest.model_validate({**BASE, "n": "1"})
    error = validation_error(info.value)
    assert isinstance(error, InvalidField) and error.field == "n" and error.code == "1214"
