"""The `[mqtt]` settings section (environment: `PARLEY_MQTT__<KEY>`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from adapters.mqtt.limits import MAX_TOPIC_LEVELS_CHARS
from bot.config import PlatformSettings

SCHEMES = {"mqtt": 1883, "mqtts": 8883}  # the IANA ports of MQTT and MQTT over TLS


@dataclass(frozen=True, slots=True)
class Broker:
    """Where the broker is and how to log in, read from `mqtt.url`."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @property
    def address(self) -> str:
        """`host:port`, for logs and the doctor (never the user or password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class MqttSettings(PlatformSettings):
    """An MQTT broker: devices publish questions on `{topic_prefix}/{session}/in` and read the
    answer as JSON events on `{topic_prefix}/{session}/out`. On when `url` is set."""

    NAME: ClassVar[str] = "mqtt"

    url: SecretStr = SecretStr("")
    """The broker: `mqtt://user:password@host:1883` or `mqtts://...` (TLS); a secret, as it holds
    the password. Empty: the bridge is off."""
    topic_prefix: str = "parley"
    """The first topic levels: requests on `{topic_prefix}/{session}/in`, answers on
    `{topic_prefix}/{session}/out`, availability on `{topic_prefix}/status`."""
    client_id: str = ""
    """This process's MQTT client id; empty: the broker assigns one (processes sharing a broker
    need their own)."""
    qos: int = Field(1, ge=0, le=2)
    """The QoS of the subscription and of every event published."""

    @model_validator(mode="before")
    @classmethod
    def _no_token(cls, data: Any) -> Any:
        # The base section's `token` means nothing here: the login is part of the URL.
        if isinstance(data, dict) and data.get("token"):
            raise ValueError("mqtt has no token: put the user and password in mqtt.url")
        return data

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            _parse(value.get_secret_value())  # messages never repeat the URL: it is a secret
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        levels = value.split("/")
        if not value or len(value) > MAX_TOPIC_LEVELS_CHARS or not all(levels):
            raise ValueError("must be one or more topic levels, e.g. 'parley' or 'home/parley'")
        if value.startswith("$") or any(c in value for c in "+#\0"):
            raise ValueError("must not start with $ or hold the wildcards + and #")
        return value

    @property
    def enabled(self) -> bool:
        """The bridge runs when a broker URL is set."""
        return bool(self.url.get_secret_value())

    @property
    def broker(self) -> Broker:
        """The broker's address and login, from `url`."""
        return _parse(self.url.get_secret_value())


def _parse(url: str) -> Broker:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("is not a URL of the form mqtt://user:password@host:port") from None
    if parts.scheme not in SCHEMES:
        raise ValueError("must start with mqtt:// or mqtts:// (TLS)")
    if not parts.hostname:
        raise ValueError("names no broker host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be only mqtt://user:password@host:port, without a path")
    return Broker(
        host=parts.hostname,
        port=port or SCHEMES[parts.scheme],
        tls=parts.scheme == "mqtts",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
