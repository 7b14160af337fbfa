"""The Responses `response` object: built from an `Answer` by `build` (for whole answers, every
stream event that carries the response, and failures), and what to store of it.

- `usage`: `prompt_tokens` -> `input_tokens` (`prompt_tokens_details.cached_tokens` ->
  `input_tokens_details.cached_tokens`; `cache_write_tokens` 0: W&B reports none),
  `completion_tokens` -> `output_tokens` (`completion_tokens_details.reasoning_tokens` ->
  `output_tokens_details.reasoning_tokens`), `total_tokens` (their sum when missing). No usage
  from upstream: `usage` null.
- `model`: upstream's (the model that answered), else the request's.
- `error`: `ResponseError.code` is a closed list, so the gateway's errors map onto it:
  a code already in it stays (`rate_limit_exceeded`, the image ones); any other 429 (`type`
  `rate_limit_error` or `insufficient_quota`: out of quota or over a budget) is
  `rate_limit_exceeded`; `invalid_request_error` is `invalid_prompt`; everything else
  (upstream failures, cut streams, timeouts, shutdown) is `server_error`. The gateway's own
  `type` and `param` ride along, its message is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import GatewayError
from gateway.responses_api.answer import Answer, from_completion, render_item
from gateway.responses_api.checks import JSON
from gateway.responses_api.items import history_calls, input_messages
from gateway.responses_api.plan import ChatPlan

_ERROR_CODES = frozenset(
    [
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "data_residency_mismatch",
        "bio_policy",
        "misalignment_policy_violation",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    ]
)
_RATE_TYPES = frozenset({"rate_limit_error", "insufficient_quota"})


def build(
    plan: ChatPlan,
    answer: Answer,
    *,
    response_id: str,
    created_at: int,
    status: str | None = None,
    error: JSON | None = None,
    completed_at: int | None = None,
) -> JSON:
    """The response object for `answer` as it stands; `status` defaults to the answer's
    outcome (completed or incomplete)."""
    outcome, incomplete = answer.outcome()
    status = status or outcome
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": completed_at if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete if status == "incomplete" else None,
        "model": answer.model or plan.model,
        "output": [render_item(item) for item in answer.items],
        "usage": usage(answer.usage),
        **plan.echo,
    }


def from_chat(
    plan: ChatPlan,
    chat: Mapping[str, Any],
    *,
    response_id: str,
    created_at: int,
    completed_at: int | None = None,
) -> JSON:
    """A whole chat completion (the parsed body) as the response object."""
    answer = from_completion(chat, response_id, history_calls(plan.messages))
    return build(
        plan, answer, response_id=response_id, created_at=created_at, completed_at=completed_at
    )


def failed_response(
    plan: ChatPlan,
    response_id: str,
    created_at: int,
    error: GatewayError | Mapping[str, Any],
    answer: Answer | None = None,
) -> JSON:
    """The response object of a response that failed (`status: "failed"`), with what was
    produced before the failure, if anything."""
    return build(
        plan,
        answer or Answer(),
        response_id=response_id,
        created_at=created_at,
        status="failed",
        error=response_error(error),
    )


def response_error(error: GatewayError | Mapping[str, Any]) -> JSON:
    """A gateway error (or an OpenAI error envelope's inner object) as a `ResponseError`."""
    if isinstance(error, GatewayError):
        fields: Mapping[str, Any] = {
            "message": error.message,
            "type": error.type,
            "code": error.code,
            "param": error.param,
        }
    else:
        fields = error
    code, kind = fields.get("code"), fields.get("type")
    code = code if isinstance(code, str) else None  # upstream's data: anything may be there
    kind = kind if isinstance(kind, str) else None
    if code in _ERROR_CODES:
        mapped = code
    elif kind in _RATE_TYPES or code == "insufficient_quota":
        mapped = "rate_limit_exceeded"
    elif kind == "invalid_request_error":
        mapped = "invalid_prompt"
    else:
        mapped = "server_error"
    message = fields.get("message")
    param = fields.get("param")
    return {
        "code": mapped,
        "message": message if isinstance(message, str) and message else "The response failed.",
        "param": param if isinstance(param, str) else None,
        "type": kind if isinstance(kind, str) else None,
    }


def usage(chat_usage: Mapping[str, Any] | None) -> JSON | None:
    """A chat completion's `usage` as a response's."""
    if chat_usage is None:
        return None
    prompt = _count(chat_usage, "prompt_tokens")
    completion = _count(chat_usage, "completion_tokens")
    total = chat_usage.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(chat_usage.get("prompt_tokens_details"), "cached_tokens"),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _count(
                chat_usage.get("completion_tokens_details"), "reasoning_tokens"
            ),
        },
        "total_tokens": total if _is_count(total) else prompt + completion,
    }


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(source: object, key: str) -> int:
    value = source.get(key) if isinstance(source, dict) else None
    return value if isinstance(value, int) and _is_count(value) else 0


def assistant_messages(response: Mapping[str, Any]) -> list[JSON]:
    """A response's output as the chat messages to store after `ChatPlan.messages`: the
    translation the same items get when a client sends them back in `input` (reasoning
    dropped; the text, refusal and tool calls in one assistant message)."""
    return input_messages(response.get("output") or [], set(), path="output")
