"""A PostgreSQL server of one's own on this machine, for ``--job-store`` without a database administrator.

``python -m diffusion_runtime.launcher.postgres --data DIR`` creates a cluster in ``DIR`` (once), starts it on a
loopback port and prints the ``postgresql://`` URL to give the frontends; Ctrl-C stops it. The tests and the
benchmarks start throwaway ones through the same ``LocalPostgres`` class. It uses Debian's ``postgresql``
package (``scripts/setup.sh`` installs it). PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user, which then owns the data folder.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from diffusion_runtime.net import free_port

DATABASE = "triton_diffusion"


def postgres_bin(program: str) -> str:
    """A PostgreSQL program: from PATH, else from Debian's versioned folder (the newest version there)."""
    found = shutil.which(program)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise FileNotFoundError(f"{program} not found: install PostgreSQL (scripts/setup.sh does, from Debian)")
    return candidates[-1]


class LocalPostgres:
    """One PostgreSQL cluster in ``data_dir`` on ``127.0.0.1:port``, trusting local connections (it listens on
    loopback only). ``durable=False`` turns off fsync: for throwaway clusters in tests, where speed matters and a
    power cut does not (a crash of the server itself still loses no committed transaction)."""

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self.socket_dir = self.data_dir / "sockets"  # a Unix socket beside the TCP port; pg_ctl wants one
        self.log_file = self.data_dir / "server.log"
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return self.url_of(DATABASE)

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self._user, "--"] if self._user else []
        return subprocess.run([*prefix, *command], check=check, capture_output=True, text=True)

    def _initialise(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            if self._run("test", "-x", str(self.data_dir.parent), check=False).returncode != 0:
                raise PermissionError(
                    f"the '{self._user}' user cannot reach {self.data_dir}: put the cluster in a folder it can reach "
                    "(e.g. under /var/lib or /tmp)"
                )
            user = pwd.getpwnam(self._user)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self._run(postgres_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        """Create the cluster when the folder has none, start it, and create the project's database."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initialise()
        self.socket_dir.mkdir(exist_ok=True)
        if self._user:
            user = pwd.getpwnam(self._user)
            os.chown(self.socket_dir, user.pw_uid, user.pw_gid)
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        if not self.durable:
            # Commits still reach the kernel before they return, so a server crash loses none; a power cut could.
            options += " -c fsync=off -c full_page_writes=off"
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "start")
        self.wait_ready(timeout)
        self.create_database(DATABASE)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [postgres_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        log = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
        raise TimeoutError(f"PostgreSQL on port {self.port} was not ready within {timeout:.0f} s\n{log}")

    def create_database(self, name: str) -> str:
        """Create the database ``name`` unless it exists; returns its URL."""
        import psycopg

        with psycopg.connect(self.url_of("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: disconnect clients and shut down cleanly; ``immediate``: as a crash would."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run(postgres_bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the cluster's folder (created on first use)")
    parser.add_argument("--port", type=int, default=5432)
    args = parser.parse_args(argv)
    server = LocalPostgres(Path(args.data).expanduser(), args.port).start()
    print(f"PostgreSQL is ready: --job-store {server.url}", flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        while not stopping:
            time.sleep(1)
    server.stop()


if __name__ == "__main__":
    main()
