"""The `tracing:` section of the config. Imports nothing of OpenTelemetry: a gateway with tracing
off never loads it."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator

from gateway import config_types as ct

WEAVE_ENDPOINT = "https://trace.wandb.ai/otel/v1/traces"
WEAVE_PATH = "/otel/v1/traces"
CONTENT_MAX_CHARS = 16 * 1024
# The OTLP header names the gateway sets itself, or that would carry a key the operator did not
# mean to send (`wandb-api-key` is the tenant account's, with `weave: true`).
_OWN_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "wandb-api-key"})


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL = re.compile(r"https?://[^/\s]+(/\S*)?")


def _endpoint(url: str) -> str:
    """An http(s) URL, used as is (the SDK appends `/v1/traces` only to the base URL of
    OTEL_EXPORTER_OTLP_ENDPOINT, which the gateway does not read); empty: none."""
    url = url.strip()
    if url and not _URL.fullmatch(url):
        raise ValueError("must be an http(s) URL (the full OTLP/HTTP traces URL), or empty")
    return url


Endpoint = Annotated[str, Field(strict=True), ct.says("a string"), AfterValidator(_endpoint)]
Ratio = Annotated[float, Field(strict=True, ge=0, le=1), ct.says("a number from 0 to 1", float)]


class TracingSettings(ct.Section):
    endpoint: Endpoint = ""  # OTLP/HTTP protobuf, the full URL; empty with weave false: off
    headers: dict[str, ct.Secret] = Field(default_factory=dict, repr=False)
    weave: ct.Flag = False  # to W&B Weave: the tenant's account key, its project's resource
    capture_content: ct.Flag = False  # prompts and answers in spans; tenants may override it
    sample_ratio: Ratio = 1.0
    content_max_chars: ct.PositiveInt = CONTENT_MAX_CHARS  # each captured value, cut past it
    max_queue: ct.PositiveInt = 2048  # spans waiting for export, all routes together
    export_timeout_s: ct.PositiveNumber = 10.0  # one export, retries included

    @field_validator("headers", mode="before")
    @classmethod
    def _names(cls, headers: Any) -> Any:
        if not isinstance(headers, dict):
            raise ValueError("must be a mapping of header names to values")
        for name in headers:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"header name {name!r} is not a string")
            if name.lower() in _OWN_HEADERS:
                raise ValueError(f"{name} is set by the gateway itself")
            value = headers[name]
            if isinstance(value, str) and (value != value.strip() or _CONTROL.search(value)):
                # an HTTP header value cannot hold them; the SDK's error would print the value
                raise ValueError(
                    f"the value of {name} has surrounding spaces or a control character"
                )
        return {name.lower(): value for name, value in headers.items()}

    @property
    def url(self) -> str:
        """Where spans go: `endpoint`, or Weave's own with `weave: true`; empty: tracing off."""
        return self.endpoint or (WEAVE_ENDPOINT if self.weave else "")
