"""The duration parser of `inference-gateway keys` (--expires-in, --grace)."""

from __future__ import annotations

import argparse

import pytest

from gateway.keys_cli import _grace, _lifetime, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("30d", 30 * 86400),
        ("2w", 14 * 86400),
        ("45", 45),
        ("0", 0),
        ("1.5h", 5400),
        (" 10m ", 600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "s", "1h30m", "-5s", "1e3", "inf", "nan", "1 h", "1H", "3y", "1.", ".5m", "9" * 400],
)
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_argparse_types() -> None:
    assert _grace("0") == 0
    assert _lifetime("1m") == 60
    with pytest.raises(argparse.ArgumentTypeError, match="more than 0 seconds"):
        _lifetime("0s")
    with pytest.raises(argparse.ArgumentTypeError, match="is not a duration"):
        _grace("soon")
