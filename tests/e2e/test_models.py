"""GET /v1/models and /v1/models/{id}: upstream's list, the tenant's allow-list, aliases."""

from __future__ import annotations

import openai
import pytest

from gateway.testing.fake_upstream import default_settings
from tests.e2e.helpers import client
from tests.procs import LIMITED_KEY, LLAMA, LLAMA70, PHI, RETIRED, Proc


def test_lists_upstream_models_and_aliases(gateway: Proc) -> None:
    ids = [m.id for m in client(gateway).models.list()]
    assert set(ids) == {*default_settings().models, "gpt-4o-mini"}  # the fake's catalogue
    assert {LLAMA, LLAMA70, PHI} <= set(ids)
    assert RETIRED not in ids  # upstream no longer offers it, whatever the price table says


def test_allow_list_narrows_the_list(gateway: Proc) -> None:
    ids = {m.id for m in client(gateway, key=LIMITED_KEY).models.list()}
    assert ids == {LLAMA, "gpt-4o-mini"}


def test_retrieve_model_with_slash_in_id(gateway: Proc) -> None:
    model = client(gateway).models.retrieve(PHI)
    assert model.id == PHI
    assert model.owned_by == "microsoft"
    assert client(gateway).models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


@pytest.mark.parametrize(("key", "model"), [(None, "nope/nothing"), (LIMITED_KEY, PHI)])
def test_unknown_or_disallowed_model_is_404(gateway: Proc, key: str | None, model: str) -> None:
    c = client(gateway, key=key) if key else client(gateway)
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve(model)
    assert err.value.code == "model_not_found"
