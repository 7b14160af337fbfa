"""What the fake W&B upstream accepts: keys and projects, limits, speed, the model catalogue.

``FakeSettings`` is the one knob the CLI and the tests turn; ``model_list`` renders its catalogue
as ``GET /v1/models`` answers it. Retired models stay out of the list (they answer 404).

The catalogue is the one ``config/gateway.yaml`` prices (W&B's, read 2026-12-03; sources there).
``REASONING`` holds the models W&B's reasoning page (docs.wandb.ai/inference/response-settings/
reasoning) lists as reasoning "always on" or "enabled by default": their answers carry reasoning
text unless ``x_fake.reasoning_tokens`` says otherwise. DeepSeek V3.1 is not on that list (its
thinking mode is chosen by prompt template), nor are models whose reasoning is "disabled by
default" (gemma 4, DeepSeek V4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

DEFAULT_KEY: Final = "fake-wandb-key"
MODELS_CREATED: Final = 1_700_000_000

MODELS: Final = (
    "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.3-70B-Instruct",
    "microsoft/Phi-4-mini-instruct",
    "meta-llama/Llama-3.1-70B-Instruct",
    "openai/gpt-oss-120b",
    "openai/gpt-oss-20b",
    "deepseek-ai/DeepSeek-V4.1-Flash",
    "deepseek-ai/DeepSeek-V4-Flash-0731",
    "deepseek-ai/DeepSeek-V4-Pro-0813",
    "deepseek-ai/DeepSeek-V3.1",
    "moonshotai/Kimi-K2.6",
    "zai-org/GLM-5.2",
    "google/gemma-4-26B-A4B-it",
    "google/gemma-4-31B-it",
    "Qwen/Qwen3.8-27B",
    "Qwen/Qwen3.5-35B-A3B",
    "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "Qwen/Qwen3-235B-A22B-Thinking-2507",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-Coder-480B-A35B-Instruct",
    "OpenPipe/Qwen3-14B-Instruct",
    "MiniMaxAI/MiniMax-M2.5",
    "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-FP8",
    "ibm-granite/granite-4.2-8b",
)
# W&B's lifecycle page: the three retired on 2026-03-04 and 2026-04-21 first, then the later ones.
RETIRED: Final = (
    "deepseek-ai/DeepSeek-R1-0528",
    "deepseek-ai/DeepSeek-V3-0324",
    "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    "zai-org/GLM-5-FP8",
    "deepseek-ai/DeepSeek-V4-Flash",
    "deepseek-ai/DeepSeek-V4-Pro",
    "ibm-granite/granite-4.1-8b",
    "Qwen/Qwen2.5-14B-Instruct",
)
REASONING: Final = frozenset(
    {
        "openai/gpt-oss-120b",
        "openai/gpt-oss-20b",
        "moonshotai/Kimi-K2.6",
        "Qwen/Qwen3-235B-A22B-Thinking-2507",
        "Qwen/Qwen3.5-35B-A3B",
        "MiniMaxAI/MiniMax-M2.5",
        "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-FP8",
    }
)


@dataclass
class FakeSettings:
    """What the fake accepts and how fast it answers."""

    api_keys: dict[str, frozenset[str] | None]  # key -> allowed projects (None: any)
    concurrency: int = 8
    project_concurrency: int | None = None
    models: tuple[str, ...] = MODELS
    retired: tuple[str, ...] = RETIRED
    reasoning: frozenset[str] = REASONING  # models that reason by default
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0


def default_settings() -> FakeSettings:
    """Settings accepting ``DEFAULT_KEY`` for any project."""
    return FakeSettings(api_keys={DEFAULT_KEY: None})


def model_list(settings: FakeSettings) -> dict[str, Any]:
    """The body of ``GET /v1/models``: every served model, owned by its organisation."""
    data = [
        {"id": m, "object": "model", "created": MODELS_CREATED, "owned_by": m.split("/")[0]}
        for m in settings.models
    ]
    return {"object": "list", "data": data}
