"""URLs as Parley shows them: a URL setting may carry `user:password@`, which no page, log line
or report may show. `url_passwords` feeds the secret redaction; the others shorten a URL for
display."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """`url` without user:password@ (a URL may carry credentials; logs and pages must not)."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        netloc = _host_port(parts.hostname, parts.port)
    except ValueError:  # e.g. a port that is not a number
        return "<unparsable URL>"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_host(url: str) -> str:
    """The `host[:port]` of `url`, without credentials (what a message about it names)."""
    try:
        parts = urlsplit(url)
        return _host_port(parts.hostname, parts.port)
    except ValueError:
        return "<unparsable URL>"


def has_credentials(url: str) -> bool:
    """Whether `url` carries a user or a password (user:password@host)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.username is not None or parts.password is not None


def url_passwords(url: str) -> list[str]:
    """The password in `url`, as written (percent-encoded) and decoded; [] when it has none."""
    try:
        password = urlsplit(url).password
    except ValueError:  # e.g. a port that is not a number
        return []
    if not password:
        return []
    return list(dict.fromkeys((password, unquote(password))))


def _host_port(host: str | None, port: int | None) -> str:
    netloc = f"[{host}]" if host and ":" in host else host or ""
    return netloc if port is None else f"{netloc}:{port}"
