"""The API's refusals, as OpenAI's clients read them: a status and
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from aiohttp import web

# OpenAI's error types; its clients pick their exception by the status, these are for people.
ErrorType = Literal[
    "invalid_request_error", "authentication_error", "rate_limit_error", "server_error"
]


def error_body(
    message: str, kind: ErrorType, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiError(Exception):
    """A request refused: its HTTP status and the error object the client gets."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: ErrorType = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, kind, code, param)
        self.headers: Mapping[str, str] = (
            {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
            if retry_after_s is not None
            else {}
        )

    def response(self) -> web.Response:
        """The JSON answer to send."""
        return web.json_response(self.body, status=self.status, headers=self.headers)
