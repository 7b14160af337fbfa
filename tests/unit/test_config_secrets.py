"""Secrets in the config never reach a terminal or a log: not through a YAML error (PyYAML quotes
the offending line), nor through a repr of the settings (`redis_url` may hold a password)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from gateway.cli import cmd_check_config
from gateway.config import ConfigError, LimiterSettings, load_settings, parse_settings
from gateway.limits.redis import RedisLimiter
from gateway.redact import masked_url
from tests.procs import base_config, free_port

SECRET = "wandb-INLINE-0123456789abcdef"
PASSWORD = "hunter2-redis-PASSWORD"

VALID = f"""\
upstream: {{base_url: "http://127.0.0.1:1/v1"}}
accounts:
  main: {{api_key: {SECRET}, max_concurrency: 4}}
tenants:
  search: {{keys: [], account: main, project: acme/search}}
"""

# Each breaks the YAML on, or right next to, the line holding the inline key.
BROKEN = {
    "an unclosed flow mapping": VALID.replace("max_concurrency: 4}", "max_concurrency: 4"),
    "an unclosed quote": VALID.replace(f"api_key: {SECRET}", f'api_key: "{SECRET}'),
    "a second colon": VALID.replace(f"api_key: {SECRET}", f"api_key: x: {SECRET}"),
    "a tab": VALID.replace("  main:", "\tmain:"),
    "the key as an alias": VALID.replace(f"api_key: {SECRET}", f"api_key: *{SECRET}"),
    "the key as a tag": VALID.replace(f"api_key: {SECRET}", f"api_key: !{SECRET} x"),
    "the key after a stray character": VALID.replace(f"api_key: {SECRET}", f"api_key: @{SECRET}"),
}


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    with pytest.raises(SystemExit) as exited:
        cmd_check_config(argparse.Namespace(config=str(path)))
    out = capsys.readouterr()
    return exited.value.code, out.out + out.err


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_a_yaml_error_names_the_place_never_the_text(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BROKEN[what])
    code, printed = check_config(path, capsys)
    assert code == 2
    assert "not valid YAML at " in printed
    assert SECRET not in printed
    assert SECRET[7:19] not in printed  # not even a part of it
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert SECRET[7:19] not in str(err.value)
    assert err.value.__cause__ is None  # no traceback chain carries PyYAML's message either


def test_a_yaml_error_says_where_and_what(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BROKEN["an unclosed flow mapping"])
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.problems == [
        "not valid YAML at line 4, column 8: expected ',' or '}', but got ':' "
        "(while parsing a flow mapping from line 3)"
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{PASSWORD}@redis:6379/0", "redis://:***@redis:6379/0"),
        (f"rediss://gateway:{PASSWORD}@redis:6380/1", "rediss://gateway:***@redis:6380/1"),
        (f"redis://:p@{PASSWORD}@redis/0", "redis://:***@redis/0"),  # the last @ ends it
        (f"redis://{PASSWORD}@redis/0", "redis://***@redis/0"),  # a lone name: maybe a password
        (
            f"unix:///run/redis.sock?db=0&password={PASSWORD}",
            "unix:///run/redis.sock?db=0&password=***",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redis_url_is_masked(url: str, shown: str) -> None:
    assert masked_url(url) == shown
    limiter = LimiterSettings(backend="redis", redis_url=url)
    assert limiter.redis_url == url  # what connects is untouched
    for text in (repr(limiter), str(limiter)):
        assert PASSWORD not in text
        assert shown in text


def test_settings_and_check_config_show_no_redis_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    raw = base_config("http://127.0.0.1:1", limiter={"backend": "redis", "redis_url": url})
    settings = parse_settings(raw)
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    path = tmp_path / "gateway.yaml"
    path.write_text(VALID + f"limiter: {{backend: redis, redis_url: '{url}'}}\n")
    cmd_check_config(argparse.Namespace(config=str(path)))
    printed = capsys.readouterr().out
    assert f"limiter: redis at {masked_url(url)}," in printed
    assert PASSWORD not in printed and SECRET not in printed


async def test_a_limiter_that_cannot_reach_redis_logs_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://gateway:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens
    limiter = RedisLimiter(LimiterSettings(backend="redis", redis_url=url))
    await limiter.start()
    try:
        assert limiter.degraded
        assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
        assert all(PASSWORD not in r.getMessage() for r in caplog.records)
    finally:
        await limiter.close()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("accounts__main__api_key", [SECRET]),
        ("limiter__redis_url", [f"redis://:{PASSWORD}@redis:6379/0"]),
        ("limiter__sentinel", {"master": "m", "nodes": ["h:1"], "password": [PASSWORD]}),
    ],
)
def test_a_mistyped_secret_is_refused_without_its_value(path: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(base_config("http://127.0.0.1:1", **{path: value}))
    text = "\n".join(err.value.problems)
    assert "must be a non-empty string" in text
    assert SECRET not in text and PASSWORD not in text
