"""What the fake W&B upstream accepts: keys and projects, limits, speed, the model catalogue.

``FakeSettings`` is the one knob the CLI and the tests turn; ``model_list`` renders its catalogue
as ``GET /v1/models`` answers it. Retired models stay out of the list (they answer 404).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

DEFAULT_KEY: Final = "fake-wandb-key"
MODELS_CREATED: Final = 1_700_000_000


@dataclass
class FakeSettings:
    """What the fake accepts and how fast it answers."""

    api_keys: dict[str, frozenset[str] | None]  # key -> allowed projects (None: any)
    concurrency: int = 8
    project_concurrency: int | None = None
    models: tuple[str, ...] = (
        "meta-llama/Llama-3.1-8B-Instruct",
        "meta-llama/Llama-3.3-70B-Instruct",
        "microsoft/Phi-4-mini-instruct",
    )
    retired: tuple[str, ...] = (
        "deepseek-ai/DeepSeek-R1-0528",
        "deepseek-ai/DeepSeek-V3-0324",
        "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    )
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
