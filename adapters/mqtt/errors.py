"""aiomqtt's errors translated into the ones the core handles, and described without secrets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

# CONNACK return codes of MQTT 3.1.1 and reason codes of MQTT 5 that mean "your login is wrong".
_LOGIN_REFUSED = {4, 5, 0x86, 0x87}  # bad user name or password, not authorised


class SubscriptionRefused(aiomqtt.MqttError):
    """The broker took the login but refused a subscription (its access control)."""

    def __init__(self, topic: str, code: ReasonCode) -> None:
        super().__init__(f"refused the subscription to {topic} ({code})")


def check_granted(codes: tuple[int, ...] | list[ReasonCode], topic: str) -> None:
    """Raise `SubscriptionRefused` unless the SUBACK granted `topic` (an ACL may refuse it)."""
    for code in codes:
        if isinstance(code, ReasonCode) and code.is_failure:
            raise SubscriptionRefused(topic, code)


def is_login_refused(exc: BaseException) -> bool:
    """The broker answered, and refused the user and password (or this client)."""
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return False
    rc = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
    return rc in _LOGIN_REFUSED


def describe(exc: BaseException) -> str:
    """Why a connection failed, in a few words; never the URL (it holds the password)."""
    if isinstance(exc, aiomqtt.MqttCodeError) and isinstance(exc.rc, ReasonCode):
        return f"the broker refused: {exc.rc}"
    if isinstance(exc, aiomqtt.MqttCodeError) and is_login_refused(exc):
        return "the broker refused the user and password"
    text = str(exc) or type(exc).__name__
    # aiomqtt wraps the socket's OSError text, e.g. "[Errno 111] Connection refused".
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


@contextlib.contextmanager
def delivery_errors() -> Iterator[None]:
    """A publish that fails because the connection is gone -> `ConnectionError`, an `OSError`
    the reply streamer retries until its deadline."""
    try:
        yield
    except aiomqtt.MqttError as exc:
        raise ConnectionError(f"MQTT broker unreachable: {describe(exc)}") from exc
