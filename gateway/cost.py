"""What one request used and what it cost: `Usage`, read from upstream's usage block or estimated
by the gateway, and `cost_usd`, from the config's price table (USD per million tokens):

    cost = (prompt - cached) x input + cached x cached_input + completion x output

`cached_input_usd_per_mtok` defaults to the input price. Cached prompt tokens are a part of the
prompt tokens, reasoning tokens a part of the completion tokens (as OpenAI and W&B count them).
A cost is rounded to `DIGITS` decimals once, here: the figure a response's `x-gateway-cost-usd`
shows is the one added to the tenant's spend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import Model

DIGITS = 10  # USD decimals kept of a cost: 1e-10 USD, far below a token's price
_MAX_TOKENS = 2**53  # a count past this is not one upstream could mean


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # of the prompt tokens, served from W&B's prompt cache
    reasoning_tokens: int = 0  # of the completion tokens, spent thinking
    estimated: int = 0  # of all tokens, counted by the gateway: upstream's usage never came

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.estimated + other.estimated,
        )

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_from(block: object) -> Usage | None:
    """Upstream's `usage` object as a `Usage`; None when it is not one. A count that is no
    non-negative integer counts 0: upstream's figures must never fail a request."""
    if not isinstance(block, dict):
        return None
    prompt = _count(block.get("prompt_tokens"))
    completion = _count(block.get("completion_tokens"))
    cached = _count(_detail(block, "prompt_tokens_details", "cached_tokens"))
    reasoning = _count(_detail(block, "completion_tokens_details", "reasoning_tokens"))
    return Usage(prompt, completion, min(cached, prompt), min(reasoning, completion))


def _detail(block: dict[str, Any], name: str, key: str) -> object:
    details = block.get(name)
    return details.get(key) if isinstance(details, dict) else None


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TOKENS:
        return value
    return 0


def priced(model: Model | None) -> bool:
    return cost_usd(model, _NOTHING) is not None


def cost_usd(model: Model | None, usage: Usage) -> float | None:
    """USD for this usage (formula above), or None when the model has no price."""
    if model is None or model.input_usd_per_mtok is None or model.output_usd_per_mtok is None:
        return None
    cached_price = model.cached_input_usd_per_mtok
    if cached_price is None:
        cached_price = model.input_usd_per_mtok
    cached = usage.cached_tokens
    usd = (
        (usage.prompt_tokens - cached) * model.input_usd_per_mtok
        + cached * cached_price
        + usage.completion_tokens * model.output_usd_per_mtok
    ) / 1_000_000
    return round(usd, DIGITS)


_NOTHING = Usage(0, 0)


def decimal(usd: float) -> str:
    """A cost as a plain decimal (no exponent), as `x-gateway-cost-usd` carries it."""
    text = f"{usd:.{DIGITS}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
