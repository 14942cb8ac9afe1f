"""Discord's error answers translated into the core's errors, with reason codes.

Discord's JSON error codes are documented at
https://discord.com/developers/docs/topics/opcodes-and-status-codes#json-json-error-codes.
"""

from __future__ import annotations

import discord

from bot.errors import DeliveryError, DeliveryReason

INVALID_WEBHOOK_TOKEN = 50027  # an expired interaction token
UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
MISSING_ACCESS = 50001
CANNOT_SEND_TO_USER = 50007  # DMs closed, or the user blocked the bot
EDIT_LIMIT_OLD_MESSAGE = 30046  # too many edits of a message older than an hour
PAYLOAD_TOO_LARGE = 40005


def reason_of(status: int, code: int) -> DeliveryReason:
    """The reason code of a refusal from its HTTP status and Discord JSON error code."""
    if code == INVALID_WEBHOOK_TOKEN:
        return "token_expired"
    if code == EDIT_LIMIT_OLD_MESSAGE:
        return "too_old"
    if status == 413 or code == PAYLOAD_TOO_LARGE:
        return "too_large"
    if status == 403 or code in (MISSING_ACCESS, CANNOT_SEND_TO_USER):
        return "forbidden"
    if status == 404 or code in (UNKNOWN_CHANNEL, UNKNOWN_MESSAGE):
        return "not_found"
    if status == 400:
        return "bad_request"
    return "unknown"


def delivery_error(what: str, exc: discord.HTTPException) -> DeliveryError:
    """A `DeliveryError` for a discord.py call that failed for good."""
    return DeliveryError(f"{what}: {exc}", reason=reason_of(exc.status, exc.code))
