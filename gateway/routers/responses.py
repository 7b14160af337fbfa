"""OpenAI's Responses API over W&B's chat completions.

    POST   /v1/responses        translated (gateway.responses_api.to_chat) into a chat completion,
                                run by the proxy as any other (auth, aliases, allow-list, limiter,
                                retries, budget, spend, metrics, access log), answered as a
                                response object or its event stream (gateway.response_writer)
    GET    /v1/responses/{id}   a stored response (`store: true`, the default), the tenant's own
    DELETE /v1/responses/{id}   forget it

`previous_response_id` continues a stored conversation: its messages go upstream before this
request's input. Another tenant's id is a 404, as an unknown one (gateway.response_store).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.types import Receive, Send

from gateway.admission import Ticket
from gateway.chat_body import OFFLOAD_BYTES
from gateway.config import Tenant
from gateway.errors import BadRequest, GatewayError, NotFound, PayloadTooLarge
from gateway.exchange import Call
from gateway.record import RequestRecord
from gateway.response_store import RESPONSE_ID
from gateway.response_writer import ResponsesResponder
from gateway.responses import Responder
from gateway.responses_api import to_chat
from gateway.routers.chat import ChatCompletions, chat_call, openapi_post, read_body
from gateway.routers.deps import RuntimeDep, TenantDep
from gateway.routers.schemas import DeletedResponse, StoredResponse, errors
from gateway.runtime import Runtime

logger = logging.getLogger(__name__)

PATH = "/v1/responses"
MAX_DEPTH = 64
MAX_MESSAGES = 10_000  # input items plus the stored conversation's messages

router = APIRouter(tags=["openai"], responses=errors(401, 503))

# Dispatched before FastAPI, as chat is (see app.py): its entry in /openapi.json is written here.
OPENAPI = openapi_post(
    "create_response",
    "Responses (OpenAI's API), over W&B's chat completions; `stream: true` too",
    {
        "type": "object",
        "required": ["model"],
        "properties": {
            "model": {"type": "string"},
            "input": {"oneOf": [{"type": "string"}, {"type": "array"}]},
            "instructions": {"type": "string"},
            "previous_response_id": {"type": "string"},
            "store": {"type": "boolean"},
            "stream": {"type": "boolean"},
            "tools": {"type": "array", "items": {"type": "object"}},
        },
        "additionalProperties": True,
    },
    {
        "description": "A response object, or its SSE event stream",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    {
        400: "a field the gateway cannot translate or take (`param` names it)",
        404: "a model the tenant may not use, or an unknown previous_response_id",
        413: "the body, with its stored conversation, is over server.max_body_bytes",
        429: "no slot in time, the tenant's max_queue, W&B's limit, quota, budget",
        502: "W&B failed, refused the gateway's key, or cannot be reached",
    },
)


class ResponsesCreate(ChatCompletions):
    def responder(
        self, send: Send, receive: Receive, runtime: Runtime, tenant: Tenant
    ) -> Responder:
        response_id = "resp_" + secrets.token_hex(24)

        async def keep(response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
            entry = {"response": response, "conversation": conversation}
            try:
                if not await runtime.responses.put(tenant.name, response_id, entry):
                    logger.warning("response %s not stored: too large", response_id)
            except GatewayError as exc:  # the client has its answer; only the next turn misses it
                logger.warning("response %s not stored: %s", response_id, exc.message)
            except Exception:  # a bug must not cost the answer, which is paid for already
                logger.exception("response %s not stored", response_id)

        return ResponsesResponder(send, receive, response_id, keep)

    async def call(
        self,
        runtime: Runtime,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        record: RequestRecord,
        start: float,
        client: Responder,
        ticket: Ticket,
    ) -> Call:
        tenant, settings = record.tenant, record.settings
        assert tenant is not None and settings is not None
        assert isinstance(client, ResponsesResponder)
        await read_body(runtime, body)  # strict at the top level, as a chat body
        request = await _parse(body)
        history = await _history(runtime, tenant, request.get("previous_response_id"))
        if len(history or ()) + _items(request) > MAX_MESSAGES:
            raise BadRequest(
                f"A conversation may hold at most {MAX_MESSAGES:,} items, the stored ones of "
                "`previous_response_id` included: start a new one.",
                param="input",
            )
        plan = client.plan = to_chat(request, history)
        chat_body = orjson.dumps(plan.body)
        limit = settings.server.max_body_bytes
        if len(chat_body) > limit:
            raise PayloadTooLarge(
                f"The request with its stored conversation would be {len(chat_body)} bytes "
                f"upstream, over the gateway's {limit} (server.max_body_bytes): start a new "
                "conversation, or send less."
            )
        ticket.grow(2 * len(chat_body))  # the body sent, and the conversation kept to store
        return await chat_call(runtime, chat_body, headers, record, start)


async def _parse(body: bytes) -> dict[str, Any]:
    try:
        if len(body) > OFFLOAD_BYTES:
            found = await asyncio.to_thread(orjson.loads, body)
        else:
            found = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"We could not parse the JSON body of your request ({exc}). Send a JSON object."
        ) from None
    if not isinstance(found, dict):
        raise BadRequest("The request body must be a JSON object.")
    if _too_deep(found):
        raise BadRequest(f"The request body is nested more than {MAX_DEPTH} levels deep.")
    return found


def _too_deep(value: object) -> bool:
    """Deeper than MAX_DEPTH: more than the gateway's JSON writer takes back (254), and more
    than any tool schema needs."""
    todo: list[tuple[object, int]] = [(value, 0)]
    while todo:
        node, depth = todo.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(node, dict):
            todo.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            todo.extend((child, depth + 1) for child in node)
    return False


def _items(request: dict[str, Any]) -> int:
    given = request.get("input")
    return len(given) if isinstance(given, list) else 1


async def _history(runtime: Runtime, tenant: Tenant, wanted: object) -> list[dict[str, Any]] | None:
    """The stored conversation `previous_response_id` names (to_chat checks a wrong type)."""
    if not isinstance(wanted, str):
        return None
    entry = await runtime.responses.get(tenant.name, wanted)
    if entry is None:
        raise NotFound(
            f"Previous response with id {_shown(wanted)} not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    conversation: list[dict[str, Any]] = entry["conversation"]
    return conversation


def _shown(response_id: str) -> str:
    """The id for a message: one of the gateway's shape as it is, any other not at all."""
    return repr(response_id) if RESPONSE_ID.fullmatch(response_id) else "given"


@router.get("/v1/responses/{response_id}", response_model=StoredResponse, responses=errors(404))
async def get_response(response_id: str, runtime: RuntimeDep, tenant: TenantDep) -> dict[str, Any]:
    """A response stored by `POST /v1/responses` (`store: true`), as it was answered."""
    entry = await runtime.responses.get(tenant.name, response_id)
    if entry is None:
        raise _not_found(response_id)
    response: dict[str, Any] = entry["response"]
    return response


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse, responses=errors(404))
async def delete_response(
    response_id: str, runtime: RuntimeDep, tenant: TenantDep
) -> dict[str, Any]:
    """Forget a stored response: it can no longer be read or continued."""
    if not await runtime.responses.delete(tenant.name, response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def _not_found(response_id: str) -> NotFound:
    return NotFound(
        f"No response found with id {_shown(response_id)}.",
        param="response_id",
        code="response_not_found",
    )
