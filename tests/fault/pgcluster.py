"""A PostgreSQL cluster of a test's own, which the test may stop and start.

Made from the installed binaries (tests/pgserver.py finds them): initdb in a
temporary directory, listening on a free port on 127.0.0.1 only, with the
durability settings a node relies on (fsync and synchronous_commit on).
Stopping it with `-m immediate` is a crash: connections drop at once and the
next start runs crash recovery.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests import pgserver


class Cluster:
    """One throwaway cluster; `start`, `stop`, `url(schema)`, `remove`."""

    def __init__(self) -> None:
        bindir = pgserver._bin_dir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (initdb) are installed")
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="relay-pgfault-"))
        self.data = self.base / "data"
        self.log = self.base / "log"
        self.port = pgserver._free_port()
        # initdb refuses to run as root: the cluster runs as postgres there
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.base, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {proc.stderr}\n{self.logs()}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, schema: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema={schema}"

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def remove(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
             "immediate", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)
