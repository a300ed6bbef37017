"""Hosts for the multi-host fault suite: network namespaces joined by veth pairs to Linux bridges, made by the test
and removed by it (``Topology.close`` deletes every namespace and link it made and kills every process left in
them, also after a failure half way).

Faults are the kernel's own where it has them: a partition is a veth taken down, packet loss an nftables rule
(``numgen random``), latency ``tc qdisc ... netem``. Kernels built without netem (``CONFIG_NET_SCH_NETEM``, e.g.
this CI's) get a delay line instead: a relay in the server's own namespace that holds every reply for the delay,
put in front of the server from the start so that connections already open are delayed too. ``latency_mechanism``
says which one ran.

Run as a script, this file is that relay: ``python netns.py delay-relay HOST PORT TARGET_HOST TARGET_PORT MS``
(SIGUSR1 switches the delay on and off).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.fault_harness import PrivatePostgres
from tests.forked import ForkedProcess

NFT_TABLE = "tgfault"


def unavailable() -> str | None:
    """Why this machine cannot make network namespaces and veth pairs (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); the multi-host suite runs as root in CI"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    probe = f"tgprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    try:
        veth = subprocess.run(["ip", "link", "add", f"tgp{os.getpid() % 100000}", "type", "veth", "peer", "name",
                               "eth0", "netns", probe], capture_output=True, text=True)
        if veth.returncode != 0:
            return f"no veth pairs: {veth.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Bridge:
    dev: str
    prefix: str  # "10.x.y": addresses are prefix.N/24, the host (the test process) is .1

    def address(self, n: int) -> str:
        return f"{self.prefix}.{n}"


@dataclass(frozen=True)
class Link:
    """One namespace's leg on a bridge: ``host_dev`` is the bridge side (down = partitioned), ``dev`` its own."""

    ns: str
    dev: str
    host_dev: str
    address: str


@dataclass
class Topology:
    """Namespaces and bridges named ``tg<tag>...`` after a random tag, on two free /24s of 10.0.0.0/8."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    namespaces: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes] | ForkedProcess] = field(default_factory=list)
    _veths: int = 0

    def bridge(self) -> Bridge:
        used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
        for _ in range(100):
            prefix = f"10.{random.randrange(100, 200)}.{random.randrange(0, 255)}"
            if f"{prefix}." not in used:
                break
        else:
            raise RuntimeError("no free /24 in 10.0.0.0/8 for a test bridge")
        dev = f"tg{self.tag}b{len(self.host_links)}"
        _ip("link", "add", dev, "type", "bridge")
        self.host_links.append(dev)
        _ip("addr", "add", f"{prefix}.1/24", "dev", dev)
        _ip("link", "set", dev, "up")
        return Bridge(dev, prefix)

    def namespace(self, name: str) -> str:
        ns = f"tg{self.tag}-{name}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def attach(self, ns: str, bridge: Bridge, n: int) -> Link:
        """A veth from ``ns`` to ``bridge`` with address ``bridge.prefix.n``."""
        self._veths += 1
        host_dev = f"tg{self.tag}v{self._veths}"
        dev = f"eth{self._ns_devs(ns)}"
        _ip("link", "add", host_dev, "type", "veth", "peer", "name", dev, "netns", ns)
        self.host_links.append(host_dev)
        _ip("link", "set", host_dev, "master", bridge.dev, "up")
        _ip("-n", ns, "addr", "add", f"{bridge.address(n)}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        return Link(ns, dev, host_dev, bridge.address(n))

    @staticmethod
    def _ns_devs(ns: str) -> int:
        out = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if " eth" in line)

    def spawn(self, ns: str, argv: list[str], log: Path, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """``argv`` inside ``ns`` (``ip netns exec`` execs it: the pid is the program's own)."""
        with log.open("ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                                    cwd=cwd, env=env)
        self.procs.append(proc)
        return proc

    def fork(self, ns: str, args: list[str], log: Path, cwd: Path) -> ForkedProcess:
        """``tiergate <args>`` inside ``ns``, forked from the warm fork server (``tests.forked``) instead of
        started by ``ip netns exec`` as a fresh interpreter."""
        proc = ForkedProcess(args, cwd, log, netns=ns)
        self.procs.append(proc)
        return proc

    def run(self, ns: str, *argv: str, stdin: str | None = None) -> str:
        done = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True,
                              timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns} failed: {done.stderr.strip()}")
        return done.stdout

    def set_link(self, link: Link, up: bool) -> None:
        _ip("link", "set", link.host_dev, "up" if up else "down")

    # ---- faults -----------------------------------------------------------------------------------------------

    def drop_incoming(self, link: Link, percent: int) -> None:
        """Drop ``percent`` % of the packets arriving on ``link`` (nftables in its namespace, with a counter)."""
        self.run(link.ns, "nft", "-f", "-", stdin=(
            f"table inet {NFT_TABLE} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n"
            f'  iifname "{link.dev}" numgen random mod 100 < {percent} counter drop\n }}\n}}\n'))

    def dropped(self, link: Link) -> int:
        out = self.run(link.ns, "nft", "list", "table", "inet", NFT_TABLE)
        return int(out.split("counter packets ", 1)[1].split()[0])

    def stop_dropping(self, link: Link) -> None:
        self.run(link.ns, "nft", "delete", "table", "inet", NFT_TABLE)

    def netem_works(self, ns: str) -> bool:
        """Whether ``tc qdisc ... netem`` exists in this kernel (tried on the namespace's loopback)."""
        try:
            self.run(ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
        except RuntimeError:
            return False
        self.run(ns, "tc", "qdisc", "del", "dev", "lo", "root")
        return True

    # ---- teardown ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill everything still running in our namespaces (daemons such as the postmaster included), then delete
        the namespaces (their veth ends go with them) and every host-side link."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for ns in self.namespaces:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for dev in reversed(self.host_links):
            subprocess.run(["ip", "link", "del", dev], capture_output=True)
        self.namespaces.clear()
        self.host_links.clear()


def leftovers(tag: str) -> list[str]:
    """Namespaces and links named after ``tag`` that still exist (the teardown must leave none)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [n for n in names if n.startswith(f"tg{tag}")] + [
        line.split(": ")[1].split("@")[0] for line in links.splitlines() if f": tg{tag}" in line]


class NetnsPostgres(PrivatePostgres):
    """``fault_harness.PrivatePostgres`` run inside ``link.ns``, listening on ``link.address`` only (pg_ctl -o
    "-p PORT -k DIR -h ADDR"), with trust for the test's private addresses."""

    def __init__(self, topo: Topology, link: Link, port: int = 5432) -> None:
        super().__init__()
        self.topo, self.link, self.port = topo, link, port

    def dsn(self, database: str = "postgres", port: int | None = None) -> str:
        return f"postgresql://postgres@{self.link.address}:{port or self.port}/{database}"

    def _pg(self, *args: str, timeout_s: float = 60) -> None:
        subprocess.run(["ip", "netns", "exec", self.link.ns, "runuser", "-u", "postgres", "--", *args], check=True,
                       capture_output=True, timeout=timeout_s, cwd=self.dir)

    def start(self) -> NetnsPostgres:
        hba = self.data / "pg_hba.conf"
        if "10.0.0.0/8" not in hba.read_text():
            with hba.open("a") as out:
                out.write("host all all 10.0.0.0/8 trust\n")
        options = (f"-p {self.port} -k {self.dir} -h {self.link.address} -c fsync=off -c full_page_writes=off "
                   "-c shared_buffers=16MB -c max_connections=50")
        self._pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                 "-w", "-t", "30", "start")
        return self


# ---- the delay line ------------------------------------------------------------------------------------------------

class DelayRelay:
    """The latency fault without netem: ``python netns.py delay-relay`` in the server's namespace."""

    def __init__(self, topo: Topology, ns: str, listen: tuple[str, int], target: tuple[str, int], delay_ms: int,
                 log: Path) -> None:
        here = Path(__file__).resolve().parent  # this file imports the test helpers beside and above it
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), str(here.parent.parent)])}
        self.proc = topo.spawn(ns, [sys.executable, __file__, "delay-relay", listen[0], str(listen[1]), target[0],
                                    str(target[1]), str(delay_ms)], log, env=env)

    def toggle(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)


async def _delay_relay(host: str, port: int, target_host: str, target_port: int, delay_ms: int) -> None:
    loop = asyncio.get_running_loop()
    delay = [0.0]

    def toggle() -> None:
        delay[0] = 0.0 if delay[0] else delay_ms / 1000
        print(f"delay {delay[0]:.3f}", flush=True)

    async def forward(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delayed: bool) -> None:
        # Each chunk leaves ``delay`` after it arrived, in order: a delay line, not a slower pipe.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def write() -> None:
            while data := (item := await queue.get())[1]:
                await asyncio.sleep(max(0.0, item[0] - loop.time()))
                dst.write(data)
                await dst.drain()

        writer = asyncio.ensure_future(write())
        try:
            while data := await src.read(65536):
                queue.put_nowait((loop.time() + (delay[0] if delayed else 0.0), data))
        except OSError:
            pass
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(OSError):
            await writer
        dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(forward(reader, up_writer, False), forward(up_reader, writer, True))

    loop.add_signal_handler(signal.SIGUSR1, toggle)
    server = await asyncio.start_server(handle, host, port)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "delay-relay":
        h, p, th, tp, ms = sys.argv[2:7]
        asyncio.run(_delay_relay(h, int(p), th, int(tp), int(ms)))
