"""The monthly budget checks: a free one before a request queues, the exact one once it holds
its slot, just before it goes upstream.

A tenant without `monthly_budget_usd` costs nothing here. For the others:

- `check` (before queueing): the spend as last seen, no I/O, so a tenant known to be over its
  budget does not queue at all;
- `admit` (slot held): the spend as the store has it now: with Redis, one round trip (shared
  with the reads asked at the same moment), given up after about a second. Every charge of a
  budgeted tenant is written through before its answer ends (`UsageStore.commit`), so the
  only overshoot left is what requests already in flight at that moment spend. When Redis
  cannot be read, the figure this process holds (Redis's total at its last read plus its own
  spend since) is used; with no figure at all the check is skipped and counted (fail open: a
  Redis outage must not stop every tenant).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.config import Tenant
from gateway.errors import BudgetExceeded
from gateway.usage import UsageStore

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 1.5  # an outer bound: the Redis store gives its read up after 1 s


class Budgets:
    def __init__(self, store: UsageStore) -> None:
        self._store = store
        self.unchecked = 0  # exact checks that fell back to no figure at all

    def check(self, tenant: Tenant) -> None:
        """Raise BudgetExceeded when the spend last seen is over the budget (no I/O)."""
        if tenant.monthly_budget_usd is not None:
            spent = self._store.known_spent(tenant.name)
            if spent is not None:
                _hold(tenant, tenant.monthly_budget_usd, spent)

    async def admit(self, tenant: Tenant) -> None:
        """Raise BudgetExceeded when the month's spend, read now, has reached the budget."""
        budget = tenant.monthly_budget_usd
        if budget is None:
            return
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                spent = await self._store.spent(tenant.name)
        except Exception:  # see above: the figure held here, else fail open
            held = self._store.known_spent(tenant.name)
            if held is None:
                self.unchecked += 1
                if self.unchecked == 1 or self.unchecked % 1000 == 0:
                    logger.warning(
                        "cannot read spend (%d times); budgets not enforced", self.unchecked
                    )
                return
            spent = held
        _hold(tenant, budget, spent)


def _hold(tenant: Tenant, budget: float, spent: float) -> None:
    if spent >= budget:
        raise BudgetExceeded(
            f"Tenant {tenant.name!r} has reached its monthly budget of ${budget:.2f} "
            f"(spent ${spent:.2f} this month, UTC). Ask your platform team to raise it."
        )
