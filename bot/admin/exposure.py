"""Who can reach the admin console: the warning at start and in `parley doctor`."""

from __future__ import annotations

import ipaddress

from bot.admin.passwords import password_file, read_hash_file
from bot.config import HTTPSettings, Settings
from bot.paths import checkout_root


def set_password_hint() -> str:
    """The command that sets the console's password, as it is typed where Parley runs from: in a
    checkout the venv's `parley` is not on the PATH, so `make admin-password` does it."""
    if checkout_root() is not None:
        return "make admin-password    (or: .venv/bin/parley admin set-password)"
    return "parley admin set-password"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); a wildcard is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(http: HTTPSettings, *, password_set: bool = True) -> str | None:
    """Why serving /admin as configured is risky, or None when it is not.

    Without a password the console serves only the page saying how to set one: nothing to
    protect yet, so no warning (Compose binds 0.0.0.0 inside the container on purpose).
    """
    if not http.enabled or not http.admin or is_loopback(http.host) or http.tls:
        return None
    if not password_set:
        return None
    return (
        f"http.host = {http.host!r}: the admin console may be reachable from other machines "
        "over plain HTTP, and its password and session cookie would cross the network "
        "unencrypted. Keep http.host on 127.0.0.1 (or publish the port on 127.0.0.1 only, as "
        "docker-compose.yml does) and use an SSH tunnel, or serve HTTPS (http.tls_cert and "
        "http.tls_key, or a TLS proxy with http.behind_tls_proxy = true)"
    )


def password_is_set(settings: Settings) -> bool:
    """True when a password is in force (blocking: reads the hash file)."""
    if settings.http.admin_password.get_secret_value():
        return True
    return read_hash_file(password_file(settings)) is not None


def password_state(settings: Settings) -> str:
    """Where the admin password comes from, for `parley doctor` (blocking: reads the file)."""
    if settings.http.admin_password.get_secret_value():
        return "password from the environment (PARLEY_HTTP__ADMIN_PASSWORD)"
    path = password_file(settings)
    if read_hash_file(path) is not None:
        return f"password set (argon2 hash in {path})"
    return f"no password set: /admin stays locked until `{set_password_hint()}`"
