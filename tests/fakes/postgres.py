"""A real, throwaway PostgreSQL 15 cluster for the tests: initdb + pg_ctl in a temporary directory.

It listens on a loopback port (password authentication over TCP, as a real deployment would) and
keeps its unix socket in its own directory, so it never meets a system cluster. Durability is
switched off (fsync, synchronous_commit): the data is thrown away anyway, and it makes CREATE
DATABASE and commits fast. initdb refuses to run as root, so as root the cluster runs as the
`postgres` system user, which then owns the directory.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BIN_DIR = Path(os.environ.get("PARLEY_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "parley"
PASSWORD = "pg-test-secret-Vq7w"  # searched for in logs and errors by the secret tests
_RUN_AS = "postgres"  # the Debian package's system user
START_TIMEOUT_S = 30


def available() -> bool:
    """Whether the PostgreSQL server binaries are installed (scripts/setup.sh installs them)."""
    return all((BIN_DIR / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One cluster: `url(db)` gives a URL with the password, `create_database()` a fresh db."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable  # fsync on, as in production (benchmarks of writes)
        self.root = Path(tempfile.mkdtemp(prefix="parley-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._as_root = os.geteuid() == 0
        if self._as_root:
            user = pwd.getpwnam(_RUN_AS)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._uid, self._gid = user.pw_uid, user.pw_gid

    def _run(self, *argv: str, timeout: float = START_TIMEOUT_S) -> None:
        prefix = ["runuser", "-u", _RUN_AS, "--"] if self._as_root else []
        done = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> PostgresServer:
        """initdb, then start the server and wait until it accepts connections."""
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_root:
            os.chown(pwfile, self._uid, self._gid)
        self._run(
            str(BIN_DIR / "initdb"),
            "-D", str(self.data),
            "-U", SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        self._serve()
        return self

    def _serve(self) -> None:
        """Start the server on the cluster and wait until it accepts connections."""
        fast = ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c max_connections=200",
                *([] if self.durable else fast),
            ]
        )
        self._run(
            str(BIN_DIR / "pg_ctl"),
            "-D", str(self.data),
            "-l", str(self.root / "server.log"),
            "-o", options,
            "-w", "-t", str(START_TIMEOUT_S),
            "start",
        )  # fmt: skip

    def halt(self) -> None:
        """Stop the server as an operator's restart or a failover does: sessions are ended,
        connections refused until `resume()`; the data stays."""
        self._run(str(BIN_DIR / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server again after `halt()`, on the same port with the same data."""
        self._serve()

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and remove the directory."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(str(BIN_DIR / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        """A TCP connection URL for `database`, as a user would write it in storage.url."""
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql on the unix socket (test set-up and inspection); its output."""
        prefix = ["runuser", "-u", _RUN_AS, "--"] if self._as_root else []
        done = subprocess.run(
            [
                *prefix,
                str(BIN_DIR / "psql"),
                "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER,
                "-d", database, "-v", "ON_ERROR_STOP=1", "-XAtq", "-c", sql,
            ],
            capture_output=True, text=True, timeout=60, cwd=self.root,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout.strip()

    def create_database(self) -> str:
        """A new, empty database (copied from template1, which takes milliseconds); its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return name


def start_postgres() -> PostgresServer:
    """Start a cluster; time it with `python -m tests.fakes.postgres`."""
    return PostgresServer().start()


if __name__ == "__main__":
    began = time.perf_counter()
    server = start_postgres()
    print(f"started in {time.perf_counter() - began:.2f} s on port {server.port}")
    began = time.perf_counter()
    print(server.create_database(), f"{time.perf_counter() - began:.3f} s")
    server.stop()
