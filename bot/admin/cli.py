"""`parley admin set-password`: read a password from standard input, store its argon2 hash."""

from __future__ import annotations

import getpass
import sys
from typing import TextIO

from bot.admin.passwords import (
    check_new_password,
    hash_password,
    password_file,
    write_hash_file,
)
from bot.config import Settings

EXIT_OK = 0
EXIT_REFUSED = 1


def set_password(
    settings: Settings, *, stdin: TextIO | None = None, out: TextIO | None = None
) -> int:
    """Ask for the password twice on a terminal (no echo), else read one line; store its hash.

    The password is never printed, logged or written anywhere but as its argon2 hash.
    """
    stdin = sys.stdin if stdin is None else stdin
    out = sys.stderr if out is None else out
    if stdin.isatty():
        password = getpass.getpass("New admin password: ")
        if getpass.getpass("Once more: ") != password:
            print("The two passwords differ; nothing was changed.", file=out)
            return EXIT_REFUSED
    else:
        password = stdin.readline().rstrip("\r\n")
    problem = check_new_password(password)
    if problem:
        print(f"Not set: {problem}.", file=out)
        return EXIT_REFUSED
    path = password_file(settings)
    write_hash_file(path, hash_password(password))  # a command, not the server: blocking is fine
    print(f"Admin password set: its argon2 hash is in {path}.", file=out)
    print("Sessions signed in with an earlier password end now.", file=out)
    if settings.http.admin_password.get_secret_value():
        print(
            "Note: PARLEY_HTTP__ADMIN_PASSWORD (http.admin_password) is set and takes precedence "
            "over this file while it is.",
            file=out,
        )
    if not settings.http.enabled:
        print("The console is served when [http] enabled = true (see README).", file=out)
    return EXIT_OK
