"""A fleet of tests' own: ``scripts/fleet.sh`` itself, on private ports and a private run directory, over a copy of
configs/fleet.yaml whose ledger is a schema of its own in the ``tiergate_fleet`` database (dropped afterwards).

The shared Redis and PostgreSQL stay as they are (nothing here flushes, restarts or reconfigures them); replicas
and HAProxy are the tests' own and stopped by ``fleet.sh down`` when the fleet's last test ends, pass or fail.
``fleet.sh`` runs with FLEET_INSTALL=0: the suite runs from the .venv ``scripts/test.sh`` installed, which a test
must not reinstall under the other tests' feet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import DEMO_KEYS, ROOT, require_service
from tests.proxy_metering_helpers import TeamSpec
from tests.waiting import eventually

FLEET_SH = ROOT / "scripts" / "fleet.sh"
FLEET_CONFIG = ROOT / "configs" / "fleet.yaml"
ADMIN = {"authorization": f"Bearer {DEMO_KEYS['admin']}"}
RESEARCH = TeamSpec(name="research", key=DEMO_KEYS["research"])
SUPPORT = TeamSpec(name="support", key=DEMO_KEYS["support"])


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Replica:
    name: str
    port: int
    dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return int((self.dir / "pid").read_text())

    @property
    def policy_file(self) -> Path:
        """What this replica reads: a link to the fleet's file, as a pod's mounted ConfigMap."""
        return self.dir / "policy.yaml"

    def readyz(self) -> dict[str, Any]:
        """/readyz as an admin sees it (the active sha256, and why the last reload was rejected)."""
        return httpx.get(self.url + "/readyz", headers=ADMIN, timeout=5).json()


@dataclass
class Fleet:
    port: int
    run_dir: Path
    config: Path
    ledger_dsn: str  # the test's schema as search_path: ``records`` means this fleet's records

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "FLEET_CONFIG": str(self.config), "FLEET_RUN_DIR": str(self.run_dir),
                "FLEET_PORT": str(self.port), "FLEET_INSTALL": "0"}

    def sh(self, *args: str, timeout_s: float = 240) -> str:
        """``bash scripts/fleet.sh ARGS`` for this fleet; its stdout, or an AssertionError with everything it said."""
        done = subprocess.run(["bash", str(FLEET_SH), *args], env=self.env(), capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise AssertionError(f"fleet.sh {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def replicas(self) -> list[Replica]:
        found = sorted(self.run_dir.glob("replicas/r*/port"), key=lambda p: int(p.parent.name[1:]))
        return [Replica(p.parent.name, int(p.read_text()), p.parent) for p in found]

    def write_config(self, mutate: Any) -> str:
        """Apply ``mutate(config_dict)`` to the fleet's file, replaced in one rename (as kubelet swaps a ConfigMap);
        returns the new file's sha256."""
        config = yaml.safe_load(self.config.read_text())
        mutate(config)
        return self.write_text(yaml.safe_dump(config, sort_keys=False))

    def write_text(self, text: str, path: Path | None = None) -> str:
        path = path or self.config
        staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
        staged.write_text(text)
        staged.replace(path)
        return sha256_of(path)

    def reset(self, original: str, replicas: int, timeout_s: float = 10.0) -> None:
        """Back to a fleet just up: ``replicas`` replicas answering, every one reading the fleet's file (its own link
        to it, as ``fleet.sh up`` made them) with ``original`` in it, and serving it; ``fleet.sh up`` again if it is
        down or a replica does not answer (an earlier test stopped it, or failed half way)."""
        if self.config.read_text() != original:
            self.write_text(original)
        want = sha256_of(self.config)
        try:
            serving = [r.readyz()["config"] for r in self.replicas()]
        except (httpx.HTTPError, ValueError, KeyError):
            serving = []
        if len(serving) != replicas or not (self.run_dir / "haproxy.pid").exists():
            self.sh("up", str(replicas))
            return
        for replica in self.replicas():
            if not (replica.policy_file.is_symlink() and replica.policy_file.resolve() == self.config.resolve()):
                replica.policy_file.unlink(missing_ok=True)
                replica.policy_file.symlink_to(self.config)
        eventually(lambda: all((c := r.readyz()["config"])["sha256"] == want and c["last_reload_error"] is None
                               for r in self.replicas()), "every replica serving the fleet's file", timeout_s)


def _free_fleet_port() -> int:
    """A port below the kernel's ephemeral range (where other tests' free_port() picks come from) with a few free
    ones after it for the replicas."""
    for _ in range(50):
        port = random.randrange(20000, 32000)
        if all(_free(port + i) for i in range(6)):
            return port
    raise RuntimeError("no free port range for a fleet")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _require_services() -> None:
    require_service("haproxy", shutil.which("haproxy") is not None, "the Debian package haproxy")
    try:
        import redis

        redis.Redis.from_url(yaml.safe_load(FLEET_CONFIG.read_text())["metering"]["redis"],
                             socket_connect_timeout=2).ping()
        redis_ok = True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        redis_ok = False
    require_service("Redis", redis_ok, "127.0.0.1:6379")
    try:
        import psycopg

        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
        pg_ok = True
    except Exception:  # noqa: BLE001
        pg_ok = False
    require_service("PostgreSQL", pg_ok, "127.0.0.1:5432")


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@contextmanager
def running_fleet(tmp_path: Path, replicas: int) -> Iterator[Fleet]:
    """``fleet.sh up N`` over a copy of configs/fleet.yaml in ``tmp_path`` with a schema of its own; down after."""
    _require_services()
    config = yaml.safe_load(FLEET_CONFIG.read_text())
    schema = "fleet_test_" + uuid.uuid4().hex[:10]
    config["metering"]["ledger_schema"] = schema
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    ledger = config["metering"]["ledger"]
    fleet = Fleet(port=_free_fleet_port(), run_dir=tmp_path / "run", config=path,
                  ledger_dsn=f"{ledger}?options=-csearch_path%3D{schema}")
    try:
        fleet.sh("up", str(replicas))
        yield fleet
    finally:
        try:
            fleet.sh("down")
        finally:
            with contextlib.suppress(Exception):  # the database may not exist if `up` failed early
                _drop_schema(ledger, schema)
