"""The two values a chat completion flows through: the `Call` going in, the `Result` coming out.

    body, headers, tenant, settings --chat_request()--> Call --Proxy.chat()--> Result --settle()

Both are frozen: whoever holds one reads it, nobody writes it after it is made. Between them
the proxy writes a `Run`, the exchange as it goes, which turns into the `Result`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import Account, Model, Tenant
from gateway.cost import Usage
from gateway.sse import StreamMeter

if TYPE_CHECKING:
    from gateway.tracing.notes import Trace

CLIENT_CLOSED = 499  # nginx's status for "client closed the request", for logs and metrics


@dataclass(frozen=True, slots=True)
class Call:
    """One chat completion request, authenticated, checked and ready to go upstream."""

    request_id: str
    tenant: Tenant
    key_id: str  # the caller's key, for its spend
    account: Account
    project: str  # the W&B project sent as OpenAI-Project
    model: str  # the resolved upstream id
    label: str  # the model as a bounded metric label
    price: Model | None  # the model's prices in the config the request was admitted under
    stream: bool
    body: bytes  # as the client sent it, but for the few fields the gateway changed
    headers: dict[str, str] = field(repr=False)  # for upstream, with the account's W&B key
    start: float  # monotonic time the request arrived
    deadline: float  # monotonic time after which neither queueing nor retrying goes on
    strip_usage: bool = False  # the gateway asked upstream for stream usage, the client did not
    prompt_tokens: int = 0  # estimated from the messages, for an answer without its usage
    read_fields: Mapping[str, Any] = field(default_factory=dict)  # what chat_body read of it
    trace: Trace | None = None  # its span, when tracing is on; the proxy notes the answer in it


@dataclass(frozen=True, slots=True)
class Result:
    """What happened: for the metrics, the usage store and the access log."""

    status: int  # what the client got; 499 when it went away first
    reason: str | None = None  # a bounded error cause (see metrics), None when all went well
    elapsed_s: float = 0.0  # arrival to last byte (or to giving up)
    queue_s: float = 0.0  # waiting for a slot
    attempts: int = 0  # sent upstream, retries included
    usage: Usage | None = None  # upstream's, plus the gateway's estimates (see Proxy)
    charged: bool = False  # the usage was added to the tenant's spend before the answer ended
    cost_usd: float | None = None  # what was charged, when `charged` (None: no price)
    first_byte_s: float | None = None  # arrival to the first streamed byte (streams only)


@dataclass(slots=True)
class Run:
    """One exchange as it goes, written only by the Proxy methods running it; `result()` turns
    it into the frozen `Result`."""

    queue_s: float = 0.0
    attempts: int = 0
    reason: str | None = None
    usage: Usage | None = None  # a whole answer's usage block, when one came
    meter: StreamMeter | None = None  # what a stream relayed, its usage block among it
    first_byte_s: float | None = None
    unbilled: int = 0  # attempts W&B may bill (it had the request) that told no usage
    charged: Usage | None = None  # added to the tenant's spend before the answer ended
    cost_usd: float | None = None  # of `charged`

    def result(self, call: Call, status: int) -> Result:
        return Result(
            status=status,
            reason=self.reason,
            elapsed_s=time.monotonic() - call.start,
            queue_s=self.queue_s,
            attempts=self.attempts,
            usage=self.charged or self.final_usage(call),
            charged=self.charged is not None,
            cost_usd=self.cost_usd,
            first_byte_s=self.first_byte_s,
        )

    def final_usage(self, call: Call) -> Usage | None:
        """Upstream's usage block is the truth. Every other attempt W&B had (a client gone
        before the answer, an answer cut or never finished, a timeout) is billed by W&B all
        the same: it counts the estimated prompt tokens (about four characters a token), plus
        one completion token per relayed content, reasoning or tool-call argument chunk (W&B
        streams a token a chunk), marked estimated."""
        usage, meter = self.usage, self.meter
        if usage is None and meter is not None:
            usage = meter.usage
        relayed = meter.content_chunks if meter is not None and usage is None else 0
        prompt = call.prompt_tokens * max(self.unbilled - (usage is not None), 0)
        if not (prompt or relayed):
            return usage
        guessed = Usage(prompt, relayed, estimated=prompt + relayed)
        return guessed if usage is None else usage + guessed
