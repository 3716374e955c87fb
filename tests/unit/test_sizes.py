import pytest

from cogserve.service.sizes import MAX_PIXELS, RECOMMENDED_SIZES, parse_size


@pytest.mark.parametrize("size", RECOMMENDED_SIZES)
def test_recommended_sizes_parse_as_width_by_height(size: str) -> None:
    width, height = parse_size(size)
    assert f"{width}x{height}" == size


@pytest.mark.parametrize(
    "size",
    ["512x512", "2048x512", "512x2048", "2048x1024", "1024x2048", "1456x1440", "528x2032"],
)
def test_boundaries_that_are_allowed(size: str) -> None:
    width, height = parse_size(size)
    assert width * height <= MAX_PIXELS


def test_two_to_the_21_pixels_exactly_is_allowed() -> None:
    assert parse_size("2048x1024") == (2048, 1024)
    assert MAX_PIXELS == 2048 * 1024


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ("496x512", "between 512 and 2048"),  # one step (16) below the minimum
        ("512x496", "between 512 and 2048"),
        ("2064x512", "between 512 and 2048"),  # one step above the maximum
        ("2048x1040", "2^21"),  # one step past 2^21 pixels
        ("1040x2048", "2^21"),
        ("1456x1456", "2^21"),
        ("520x512", "divisible by 16"),
        ("1024x1000", "divisible by 16"),
        ("0x0", "between 512 and 2048"),
        ("1024", "WIDTHxHEIGHT"),
        ("1024X1024", "WIDTHxHEIGHT"),
        ("1024*1024", "WIDTHxHEIGHT"),
        ("1024x1024 ", "WIDTHxHEIGHT"),
        (" 1024x1024", "WIDTHxHEIGHT"),
        ("１０２４x１０２４", "WIDTHxHEIGHT"),  # full-width digits are not ASCII digits
        ("1e3x512", "WIDTHxHEIGHT"),
        ("-512x512", "WIDTHxHEIGHT"),
        ("512.0x512", "WIDTHxHEIGHT"),
        ("", "WIDTHxHEIGHT"),
        ("99999999x1", "WIDTHxHEIGHT"),
    ],
)
def test_sizes_refused_with_the_rule_they_break(size: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("^", r"\^")):
        parse_size(size)
