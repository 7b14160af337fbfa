"""OpenAI's chat-completions request schema as a minimal OpenAPI 3.1 document, built at fuzz time.

The schema comes from the installed `openai` SDK's request types (the TypedDicts its
`client.chat.completions.create` takes), not from OpenAI's openapi.yaml, which this repository
does not ship. `model` is narrowed to the names the fuzz config knows (models and aliases, so
that most cases reach the fake upstream and get a completion) plus a few the fake refuses.
"""

from __future__ import annotations

from typing import Any

import pydantic
from openai.types.chat import completion_create_params as params

PATH = "/v1/chat/completions"
REF = "#/components/schemas/{model}"
# The gateway forwards these and the fake answers 404: two it has never heard of, and one the
# config prices but W&B has retired.
UNKNOWN_MODELS = ("gpt-unknown", "acme/Not-A-Model-1B", "deepseek-ai/DeepSeek-R1-0528")

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _body(kind: type, models: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One request variant's schema and its definitions, refs pointing into `components`."""
    schema = pydantic.TypeAdapter(kind).json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    schema["properties"]["model"] = {"type": "string", "enum": models}
    # OpenAI's documented range (the SDK's type says only int); fuzz/hooks.py says why.
    choices = {"type": "integer", "minimum": 1, "maximum": 128}
    schema["properties"]["n"] = {"anyOf": [choices, {"type": "null"}]}
    return schema, defs


def document(models: list[str]) -> dict[str, Any]:
    """`POST /v1/chat/completions` taking either request variant (plain, or `stream: true`)."""
    names = [*models, *UNKNOWN_MODELS]
    plain, defs = _body(params.CompletionCreateParamsNonStreaming, names)
    streamed, same_defs = _body(params.CompletionCreateParamsStreaming, names)
    schemas: dict[str, Any] = {**defs, **same_defs}  # the same definitions, by name
    schemas["ChatRequest"] = plain
    schemas["ChatStreamRequest"] = streamed
    schemas["ErrorEnvelope"] = _ERROR
    error = {
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorEnvelope")}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"OpenAI chat completions (openai {_sdk_version()})", "version": "1"},
        "paths": {
            PATH: {
                "post": {
                    "operationId": "createChatCompletion",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": REF.format(model="ChatRequest")},
                                        {"$ref": REF.format(model="ChatStreamRequest")},
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "a completion, or its SSE stream",
                            "content": {"application/json": {}, "text/event-stream": {}},
                        },
                        "default": {"description": "an OpenAI error envelope", **error},
                    },
                }
            }
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _sdk_version() -> str:
    import openai

    return str(openai.__version__)
