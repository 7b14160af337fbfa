"""The monthly budget check, before a request may queue for a slot.

A tenant without `monthly_budget_usd` costs nothing here. For the others the month's spend is
usually known without I/O (the usage store keeps it); the first read of a month goes to the
store, bounded by `READ_TIMEOUT_S`. An unreachable store fails open: it must not stop every
request, so the check is skipped and counted, with a warning now and then.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.config import Tenant
from gateway.errors import BudgetExceeded
from gateway.usage import UsageStore

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.5


class Budgets:
    def __init__(self, store: UsageStore) -> None:
        self._store = store
        self.unchecked = 0  # checks skipped because the spend could not be read

    async def check(self, tenant: Tenant) -> None:
        """Raise BudgetExceeded when the tenant has spent its budget this month."""
        budget = tenant.monthly_budget_usd
        if budget is None:
            return
        spent = self._store.known_spent(tenant.name)
        if spent is None:
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    spent = await self._store.spent(tenant.name)
            except Exception:  # fail open, see above
                self.unchecked += 1
                if self.unchecked == 1 or self.unchecked % 1000 == 0:
                    logger.warning(
                        "cannot read spend (%d times); budgets not enforced", self.unchecked
                    )
                return
        if spent >= budget:
            raise BudgetExceeded(
                f"Tenant {tenant.name!r} has reached its monthly budget of ${budget:.2f} "
                f"(spent ${spent:.2f} this month, UTC). Ask your platform team to raise it."
            )
