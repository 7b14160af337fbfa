"""`gateway.cost`: upstream's usage block read without trusting it, and the pricing formula."""

from __future__ import annotations

import pytest

from gateway.config import Model
from gateway.cost import Usage, cost_usd, decimal, priced, usage_from

PHI = Model(
    id="phi",
    input_usd_per_mtok=0.08,
    cached_input_usd_per_mtok=0.02,
    output_usd_per_mtok=0.35,
)


def test_a_usage_block_with_its_details() -> None:
    block = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 25},
    }
    assert usage_from(block) == Usage(100, 40, cached_tokens=60, reasoning_tokens=25)


@pytest.mark.parametrize(
    "block",
    [
        {"prompt_tokens": "100", "completion_tokens": -3},
        {"prompt_tokens": True, "completion_tokens": 1.5},
        {"prompt_tokens": 2**60, "completion_tokens": None},
        {"prompt_tokens_details": "x", "completion_tokens_details": [1]},
        {"prompt_tokens_details": {"cached_tokens": 9}},  # more cached than prompt: capped
    ],
)
def test_odd_counts_count_nothing(block: dict[str, object]) -> None:
    assert usage_from(block) == Usage(0, 0)


def test_not_a_usage_block() -> None:
    assert usage_from(None) is None and usage_from([1, 2]) is None and usage_from("x") is None


def test_cached_tokens_are_priced_at_the_cached_price() -> None:
    usage = Usage(1000, 200, cached_tokens=600, reasoning_tokens=50)
    # (1000 - 600) x 0.08 + 600 x 0.02 + 200 x 0.35, per million
    assert cost_usd(PHI, usage) == round((400 * 0.08 + 600 * 0.02 + 200 * 0.35) / 1e6, 10)


def test_the_cached_price_defaults_to_the_input_price() -> None:
    model = Model(id="m", input_usd_per_mtok=0.1, output_usd_per_mtok=0.1)
    assert cost_usd(model, Usage(10, 10, cached_tokens=10)) == round(20 * 0.1 / 1e6, 10)


def test_no_price_no_cost() -> None:
    for model in (None, Model(id="m", input_usd_per_mtok=0.1), Model(id="m")):
        assert cost_usd(model, Usage(1, 1)) is None and not priced(model)
    assert priced(PHI)


def test_usages_add_up() -> None:
    total = Usage(1, 2, 0, 1) + Usage(10, 20, 5, 3, estimated=30)
    assert total == Usage(11, 22, 5, 4, estimated=30) and total.total == 33


@pytest.mark.parametrize(
    ("usd", "text"),
    [(0.0, "0.0"), (1.5e-06, "0.0000015"), (0.00012345678912, "0.0001234568"), (12.0, "12.0")],
)
def test_a_cost_is_a_plain_decimal(usd: float, text: str) -> None:
    assert decimal(round(usd, 10)) == text
