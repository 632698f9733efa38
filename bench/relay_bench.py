"""Relay benchmark: N sessions through rtgate, the minimal picows relay and directly, in one run.

Traffic (``docs/performance.md`` 1): each session sends an audio append every frame period and
receives an audio delta every period, a transcript delta every 5th and a ``response.done`` +
``response.created`` every 100th. ``--frame-ms 20``: 50 frames/s each way (111 relayed per
second per session); ``--frame-ms 100``: 10 each way, 5x the bytes per frame. The load generator
(``harness/loadgen.py``: fake upstream and every client in one process) is pinned to CPU 0, the
relay under test to CPU 1 (``--workers N`` > 1: rtgate on both). Every configuration runs back to
back at the same N, ``--runs`` times; "added" is a relay's latency minus the direct connection's
in the same run, per direction and percentile; µs/frame is the relay's CPU (user + sys) per
frame relayed, both directions, and "x picows" its ratio to the picows relay's in the same run.
A row marked "(slow host)" ran while a fixed Python loop on the relay's core, timed before and
after it, took 15 % longer than the fastest this benchmark has seen: compare it with nothing.
Such a row, like a noisy one (other jobs busy during its window), is run again, up to
``--retries`` times; every attempt is kept in ``--out``.

``--rtgate-src [LABEL=]DIR`` (repeatable) runs the rtgate of a checkout, so one run compares two
commits (``before=../main --rtgate-src after=../branch``): its ``.venv`` if it has one, else this
interpreter, with ``DIR/src`` first on ``PYTHONPATH``. ``--rtgate-venv [LABEL=]VENV`` runs the
rtgate installed in a venv. Neither: this checkout, as ``rtgate``.

``--idle``: N silent sessions per relay; reports the relay's fixed footprint (RSS before any
session), RSS per open idle session, the relay's CPU per session opened, and RSS after they all
close (does memory go back down?).

``--budget-for LABEL[,LABEL]``: those rtgate builds' keys have a daily budget they never
reach, so every metered event is followed by a budget check (the spend read,
``metering/spend.py``), as for a tenant's key. Give one checkout twice under two labels
(``--rtgate-src plain=. --rtgate-src budget=. --budget-for budget``) to compare in one run.

``--upstream-tls`` (with ``--idle``): the load generator serves the upstream over TLS with a
dev certificate (``scripts/dev-cert``), and every relay trusts the system's CA bundle plus that
certificate, as a relay dialling a provider over ``wss://`` trusts the system's: the picows relay
through its ``cafile``, rtgate through ``SSL_CERT_FILE``. What a TLS upstream costs per session.

    python bench/relay_bench.py --ns 500 [--frame-ms 100] [--idle] [--workers 2] [--runs 2]
        [--rtgate-src before=DIR --rtgate-src after=DIR] [--anchors] [--out bench/results/x.jsonl]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "bench" / "harness"
UP_PORT = 9000
RTGATE_PORT = 8090
RELAY_CPU, LOADGEN_CPU = "1", "0"
#: Relay and generator run at a higher priority when we may (root): other jobs share the two
#: cores (a test suite started beside a run put 200 ms into the direct connection's p99). At
#: nice -10 CFS gives ours ~90 % of a core they compete for, and leaves the rest to the others.
NICE = -10 if os.geteuid() == 0 else 0


def pinned(cpus: str) -> list[str]:
    """The command prefix that runs a process on ``cpus`` at priority ``NICE``."""
    return ["nice", "-n", str(NICE), "taskset", "-c", cpus]


def boost(pid: int) -> None:
    """Give the session of ``pid`` the priority ``NICE`` too. With autogroup scheduling (Linux's
    default for desktops and many VMs) CPU is shared fairly between sessions first, so a
    process's own nice only counts against the processes of its session."""
    if NICE:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(NICE))


#: The lines the load generator prints on stderr (harness/loadgen.py).
MARKS = ("WINDOW_START", "WINDOW_END", "IDLE_OPEN", "IDLE_CLOSED")
#: The minimal relays: script, port. ``hybrid``: aiohttp serves the client, picows dials upstream.
ANCHORS = {
    "picows": ("relay_picows.py", 8004),
    "aiohttp": ("relay_aiohttp.py", 8002),
    "hybrid": ("relay_hybrid.py", 8006),
    "hybrid-direct": ("relay_hybrid.py", 8008),
}


def wait_port(port: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def tree(p: psutil.Process) -> list[psutil.Process]:
    try:
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [p]


def cpu_seconds(procs: list[psutil.Process]) -> tuple[float, float]:
    """User and system CPU seconds of ``procs``."""
    user = system = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a process that ended used no more
            t = p.cpu_times()
            user += t.user
            system += t.system
    return user, system


def rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 1e6


def git_describe(src: Path) -> str:
    """The last commit that changed ``src/`` in a checkout (``+dirty`` if it has changed since),
    so a result names the code it measured."""
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "log", "-1", "--format=%h", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


@dataclass(frozen=True)
class RtgateBuild:
    """Which rtgate to run: an interpreter, and the checkout whose ``src`` goes first."""

    name: str
    python: Path
    src: Path | None

    @classmethod
    def from_src(cls, arg: str) -> RtgateBuild:
        """``[LABEL=]DIR``: the checkout's ``.venv`` if it has one, else this interpreter."""
        label, _, path = arg.rpartition("=")
        src = Path(path).resolve()
        venv_python = src / ".venv" / "bin" / "python"
        python = venv_python if venv_python.exists() else Path(sys.executable)
        return cls(f"rtgate:{label or src.name}", python, src)

    @classmethod
    def from_venv(cls, arg: str) -> RtgateBuild:
        """``[LABEL=]VENV``: the rtgate installed in that venv."""
        label, _, path = arg.rpartition("=")
        venv = Path(path).resolve()
        label = label or (venv.parent.name if venv.name == ".venv" else venv.name)
        return cls(f"rtgate:{label}", venv / "bin" / "python", None)

    def package(self) -> Path | None:
        """The ``rtgate`` package directory this build imports (None: it imports none), found
        as ``Rtgate`` starts it: without this process's ``PYTHONPATH``, not from here."""
        if self.src is not None:
            return self.src / "src" / "rtgate"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out = subprocess.run(
            [str(self.python), "-c", "import rtgate; print(rtgate.__file__)"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        ).stdout.strip()
        return Path(out).parent if out else None

    def describe(self) -> str:
        package = self.package()
        # where the venv's rtgate comes from (an editable install: a checkout)
        where = package.parent.parent if package is not None else self.python.parent.parent
        return f"{where} ({git_describe(where)}) via {self.python}"

    def precompile(self) -> None:
        """Compile the build's modules to bytecode before it starts (``precompile``)."""
        package = self.package()
        if package is None:
            sys.exit(f"{self.name}: {self.python} imports no rtgate")
        precompile(self.python, package)


def precompile(python: Path, where: Path) -> None:
    """Write the bytecode of the modules under ``where``, as an installed package has it (pip
    compiles at install; a checkout's first run writes it). An rtgate that compiles its modules
    at start-up holds 0.5-1.3 MB more idle, part of which its first sessions take up
    (docs/performance.md 9.17), and a host that sets ``PYTHONDONTWRITEBYTECODE`` (this one
    does) never writes it. The anchors' scripts run from source, as a script does; what they
    import starts from bytecode too."""
    subprocess.run([str(python), "-m", "compileall", "-q", str(where)], check=True)


def one_relay_build(relay: str, rtgate_src: str | None) -> tuple[str, dict[str, RtgateBuild]]:
    """The name and builds of the one relay a probe or a profile runs: an anchor by its name,
    or rtgate from ``--rtgate-src`` (else this checkout), announced on stdout."""
    if relay != "rtgate":
        precompile(Path(sys.executable), HARNESS)
        return relay, {}
    build = (
        RtgateBuild.from_src(rtgate_src)
        if rtgate_src is not None
        else RtgateBuild("rtgate", Path(sys.executable), ROOT)
    )
    print(f"{build.name}: {build.describe()}", flush=True)
    build.precompile()
    return build.name, {build.name: build}


class Rtgate:
    """rtgate started as an operator starts it, with a fresh key and data directory (SQLite)."""

    def __init__(
        self,
        build: RtgateBuild,
        workers: int,
        upstream: str,
        tls: UpstreamTls | None,
        key_options: list[str],
        probe: Path | None = None,
    ) -> None:
        self.build = build
        self.workers = workers
        self.home = Path(tempfile.mkdtemp(prefix="rtgate-bench-"))
        env = {
            **os.environ,
            "RTGATE_HOME": str(self.home),
            "RTGATE_OPENAI_BASE_URL": f"{upstream}/v1",
            "OPENAI_API_KEY": "sk-bench-provider-key",
            "RTGATE_LOG_LEVEL": "warning",
        }
        for var in ("RTGATE_DATABASE_URL", "RTGATE_CONFIG", "RTGATE_REDIS_URL", "PYTHONPATH"):
            env.pop(var, None)
        if build.src is not None:
            env["PYTHONPATH"] = str(build.src / "src")
        if probe is not None:  # a sitecustomize for the server process (bench/loop_lag)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(probe.resolve()), *filter(None, [env.get("PYTHONPATH")])]
            )
        if tls is not None:
            env["SSL_CERT_FILE"] = str(tls.bundle)
        self.env = env
        out = subprocess.run(
            [str(build.python), "-m", "rtgate", "keys", "create", "--name", "bench", *key_options],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        self.key = out.stdout.strip().splitlines()[-1]

    def command(self) -> list[str]:
        cpus = RELAY_CPU if self.workers == 1 else "0-1"
        return [
            *pinned(cpus),
            *(str(self.build.python), "-m", "rtgate", "serve"),
            *("--port", str(RTGATE_PORT), "--workers", str(self.workers)),
        ]

    def records(self) -> tuple[int, int]:
        """Usage records that are durable: distinct record ids in ``usage_records`` and in the
        spill segments (where the ledger puts what the database did not take in time; a segment
        being drained may hold rows the database has too). Returns (all, spilled only)."""
        db = sqlite3.connect(self.home / "rtgate.db")
        try:
            stored = {str(r[0]) for r in db.execute("SELECT record_id FROM usage_records")}
        finally:
            db.close()
        spilled: set[str] = set()
        for seg in sorted((self.home / "usage-spill").glob("seg-*.jsonl")):
            for line in seg.read_bytes().splitlines():
                with contextlib.suppress(ValueError):  # a line torn at the relay's exit
                    entry = json.loads(line)
                    if isinstance(entry, dict) and entry.get("entry", "usage") == "usage":
                        spilled.add(str(entry.get("record_id")))
        return len(stored | spilled), len(spilled - stored)


@dataclass(frozen=True)
class UpstreamTls:
    """The dev certificate the load generator's upstream serves, and the bundle relays trust:
    the system's CAs and that certificate."""

    cert: Path
    key: Path
    bundle: Path

    @classmethod
    def make(cls) -> UpstreamTls:
        where = Path(tempfile.mkdtemp(prefix="rtgate-bench-tls-"))
        atexit.register(shutil.rmtree, where, ignore_errors=True)  # a private key: not left
        subprocess.run(
            [str(ROOT / "scripts" / "dev-cert"), str(where)], check=True, capture_output=True
        )
        bundle = where / "bundle.pem"
        paths = ssl.get_default_verify_paths()
        found = [Path(p) for p in (paths.cafile, paths.openssl_cafile) if p and Path(p).is_file()]
        if not found:
            sys.exit("--upstream-tls: no system CA bundle to trust beside the dev certificate")
        bundle.write_bytes(found[0].read_bytes() + (where / "cert.pem").read_bytes())
        return cls(where / "cert.pem", where / "key.pem", bundle)


def plain_upstream(a: argparse.Namespace) -> None:
    """For scripts that start relays with ``Relay.start`` and ``load_generator`` but offer
    none of ``--upstream-tls``, ``--budget-for`` and ``--probe``: a plain ``ws://`` upstream,
    no budget, no probe."""
    a.tls, a.budget_for, a.probe = None, set(), None


def upstream_base(a: argparse.Namespace) -> str:
    """The upstream's address as a relay dials it."""
    return f"{'wss' if a.tls else 'ws'}://127.0.0.1:{UP_PORT}"


@dataclass
class Relay:
    """One relay under test, started fresh for one measurement."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    rtgate: Rtgate | None = None
    headers: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, a: argparse.Namespace, builds: dict[str, RtgateBuild]) -> Relay:
        if name == "direct":
            return cls(name, UP_PORT)
        if name in builds:
            budget = ["--budget-usd-day", "1000000"] if name in a.budget_for else []
            rt = Rtgate(builds[name], a.workers, upstream_base(a), a.tls, budget, a.probe)
            proc = subprocess.Popen(rt.command(), env=rt.env, start_new_session=True)
            boost(proc.pid)
            return cls(name, RTGATE_PORT, proc, rt, [f"Authorization: Bearer {rt.key}"])
        script, port = ANCHORS[name]
        cmd = [*pinned(RELAY_CPU), sys.executable, str(HARNESS / script)]
        cmd += ["--port", str(port), "--upstream", upstream_base(a), "--loop", "uvloop"]
        if a.tls is not None:
            cmd += ["--upstream-cafile", str(a.tls.bundle)]
        if name == "hybrid-direct":
            cmd.append("--down-direct")
        proc = subprocess.Popen(
            cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        boost(proc.pid)
        return cls(name, port, proc)

    def ready(self) -> bool:
        if self.proc is None:
            return True
        if not wait_port(self.port, 60):
            return False
        time.sleep(1.0)
        return True

    def procs(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            return tree(psutil.Process(self.proc.pid))
        return []

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def load_generator(
    relay: Relay, n: int, a: argparse.Namespace, idle: bool
) -> Iterator[tuple[subprocess.Popen[str], dict[str, threading.Event]]]:
    """The load generator against ``relay``, with an event per marker line it prints."""
    cmd = [*pinned(LOADGEN_CPU), sys.executable, str(HARNESS / "loadgen.py")]
    cmd += ["--url", f"ws://127.0.0.1:{relay.port}/v1/realtime?model=gpt-realtime"]
    cmd += ["--up-port", str(UP_PORT), "--n", str(n), "--label", relay.name]
    cmd += ["--frame-ms", str(a.frame_ms), "--audio-chars", str(64 * a.frame_ms)]
    cmd += ["--warmup", str(a.warmup), "--duration", str(a.duration)]
    if idle:
        cmd.append("--idle")
    if a.tls is not None:
        cmd += ["--up-tls-cert", str(a.tls.cert), "--up-tls-key", str(a.tls.key)]
    for h in relay.headers:
        cmd += ["--header", h]
    lg = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    boost(lg.pid)
    marks = {
        m: threading.Event() for m in ("WINDOW_START", "WINDOW_END", "IDLE_OPEN", "IDLE_CLOSED")
    }

    def read_marks(stream: IO[str]) -> None:
        for line in stream:
            ev = marks.get(line.strip())
            if ev is not None:
                ev.set()
            elif line.strip():
                sys.stderr.write(f"  loadgen: {line}")

    assert lg.stderr is not None
    threading.Thread(target=read_marks, args=(lg.stderr,), daemon=True).start()
    try:
        yield lg, marks
    finally:
        if lg.poll() is None:
            lg.kill()
            lg.wait()


def ramp_limit(n: int) -> float:
    return 60 + n / 200 + 40


def finish(lg: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = lg.communicate(timeout=timeout)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def measure_load(relay: Relay, n: int, a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    with load_generator(relay, n, a, idle=False) as (lg, marks):
        limit = ramp_limit(n) + a.warmup + a.duration
        if not marks["WINDOW_START"].wait(limit):
            res["error"] = "load generator never reached its window"
            return res
        procs = relay.procs()
        gen = [psutil.Process(lg.pid)]
        psutil.cpu_percent(percpu=True)  # starts the machine-wide count
        steal0 = getattr(psutil.cpu_times(), "steal", 0.0)
        (u0, s0), (g0, h0), t0 = cpu_seconds(procs), cpu_seconds(gen), time.monotonic()
        peak = 0.0
        while not marks["WINDOW_END"].wait(0.5) and time.monotonic() - t0 < a.duration + 30:
            peak = max(peak, rss_mb(procs))
        dt = time.monotonic() - t0
        # What else ran on the machine meanwhile (other jobs share these two cores): the
        # machine's busy CPU minus the relay's and the generator's, in % of one core.
        res["percore_pct"] = psutil.cpu_percent(percpu=True)
        # CPU time the hypervisor gave to other guests (a VM's vCPUs share host cores).
        res["steal_pct"] = 100.0 * (getattr(psutil.cpu_times(), "steal", 0.0) - steal0) / dt
        g1, h1 = cpu_seconds(gen)
        res["loadgen_cpu_pct"] = 100.0 * (g1 + h1 - g0 - h0) / dt
        res["others_cpu_pct"] = sum(res["percore_pct"]) - res["loadgen_cpu_pct"]
        if procs:
            procs = relay.procs()
            u1, s1 = cpu_seconds(procs)
            res["relay_cpu_pct"] = 100.0 * (u1 + s1 - u0 - s0) / dt
            res["relay_user_pct"] = 100.0 * (u1 - u0) / dt
            res["relay_sys_pct"] = 100.0 * (s1 - s0) / dt
            res["relay_rss_mb"] = rss_mb(procs)
            res["relay_rss_peak_mb"] = max(peak, res["relay_rss_mb"])
            res["relay_procs"] = len(procs)
            res["others_cpu_pct"] -= res["relay_cpu_pct"]
        res["load"] = finish(lg, limit)
    return res


def measure_idle(relay: Relay, n: int, a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"relay_rss_fixed_mb": rss_mb(relay.procs())}
    u0, s0 = cpu_seconds(relay.procs())
    with load_generator(relay, n, a, idle=True) as (lg, marks):
        if not marks["IDLE_OPEN"].wait(ramp_limit(n)):
            res["error"] = "the sessions never all opened"
            return res
        u1, s1 = cpu_seconds(relay.procs())
        res["relay_cpu_ms_per_open"] = 1e3 * (u1 + s1 - u0 - s0) / n
        time.sleep(a.settle)
        res["relay_rss_open_mb"] = rss_mb(relay.procs())
        assert lg.stdin is not None
        lg.stdin.write("close\n")
        lg.stdin.flush()
        if not marks["IDLE_CLOSED"].wait(30):
            res["error"] = "the sessions did not close"
        res["load"] = finish(lg, 30)
    time.sleep(a.settle)
    res["relay_rss_closed_mb"] = rss_mb(relay.procs())
    time.sleep(a.settle)
    res["relay_rss_closed_late_mb"] = rss_mb(relay.procs())
    opened = max(1, int(res["load"].get("connected") or 0))
    res["kb_per_idle_session"] = (
        1e3 * (res["relay_rss_open_mb"] - res["relay_rss_fixed_mb"]) / opened
    )
    return res


def wait_quiet(limit_pct: float, timeout: float) -> tuple[float, float]:
    """Wait until the machine's busy CPU stays under ``limit_pct`` of one core for 2 s (other
    jobs share it), up to ``timeout`` s; returns the seconds waited and the last busy figure."""
    t0 = time.monotonic()
    calm = 0
    while True:
        busy = sum(psutil.cpu_percent(interval=1.0, percpu=True))
        calm = calm + 1 if busy < limit_pct else 0
        if calm >= 2 or time.monotonic() - t0 > timeout:
            return time.monotonic() - t0, busy


#: A fixed piece of Python, timed on the relay's core before and after each row: the host's
#: speed in that minute. A quiet machine can still run slow for minutes at a time (the
#: hypervisor's neighbours; docs/performance.md 9.15), which the busy-CPU check cannot see.
SPEED_LOOP = (
    "import time\nt=time.perf_counter()\ns=0\nfor i in range(3_000_000): s+=i\n"
    "print(time.perf_counter()-t)"
)
#: A row whose host loop took this much longer than the fastest of its run is marked slow.
SLOW_HOST = 1.15


def host_loop_s() -> float:
    """Seconds the host takes for ``SPEED_LOOP`` on the relay's core, now."""
    out = subprocess.run(
        [*pinned(RELAY_CPU), sys.executable, "-c", SPEED_LOOP],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def run_one(
    name: str, n: int, run: int, a: argparse.Namespace, builds: dict[str, RtgateBuild]
) -> dict[str, Any]:
    waited, busy = wait_quiet(a.quiet_pct, a.quiet_wait)
    res: dict[str, Any] = {
        "quiet_wait_s": round(waited, 1),
        "busy_before_pct": busy,
        "host_loop_s": [round(host_loop_s(), 3)],
        "nice": NICE,
        "config": name,
        "n": n,
        "run": run,
        "frame_ms": a.frame_ms,
        "mode": "idle" if a.idle else "load",
        "upstream_tls": a.tls is not None,
        "budget": name in a.budget_for,
        "workers": a.workers if name in builds else 1,
    }
    if name in builds:
        res["rtgate"] = builds[name].describe()
    relay = Relay.start(name, a, builds)
    try:
        if not relay.ready():
            res["error"] = "relay did not start"
            return res
        res.update(measure_idle(relay, n, a) if a.idle else measure_load(relay, n, a))
    finally:
        time.sleep(0.5)
        relay.stop()
    res["host_loop_s"].append(round(host_loop_s(), 3))
    if relay.rtgate is not None:
        res["rtgate_home"] = str(relay.rtgate.home)
        res["ledger_records"], res["ledger_spilled_only"] = relay.rtgate.records()
    return res


# ---------------------------------------------------------------- the report


def p(d: dict[str, Any] | None, k: str) -> float:
    return float((d or {}).get(k) or 0.0)


def lost(r: dict[str, Any]) -> int:
    L = r.get("load") or {}
    return int(r["n"] - (L.get("connected") or 0) + (L.get("unexpected_closes") or 0))


def us_per_frame(r: dict[str, Any]) -> float | None:
    L = r.get("load") or {}
    fps = float(L.get("up_rx_appends_per_s", 0) + L.get("down_rx_frames_per_s", 0))
    cpu = r.get("relay_cpu_pct")
    return cpu * 1e4 / fps if cpu and fps else None


def key(r: dict[str, Any]) -> tuple[int, int, int]:
    """Rows compared with each other: the same run, N and frame period."""
    return int(r["run"]), int(r["n"]), int(r["frame_ms"])


def slow_host(r: dict[str, Any], fastest: float) -> bool:
    """Whether ``r`` ran while the host was slow: its slower host loop, before or after the
    window, ``SLOW_HOST`` times ``fastest`` (the fastest this benchmark has seen) or more."""
    mine: list[float] = r.get("host_loop_s") or []
    return bool(mine) and max(mine) >= SLOW_HOST * fastest


def load_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | relay | N | frame | added up p50 / p99 | added down p50 / p99 | CPU % "
        "| µs/frame | x picows | RSS MB | lost | metered | generator / others CPU % |",
        "|---:|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    direct = {key(r): r.get("load") or {} for r in rows if r["config"] == "direct"}
    picows = {key(r): us_per_frame(r) for r in rows if r["config"] == "picows"}
    for r in rows:
        workers = f" x{r['workers']} workers" if r.get("workers", 1) > 1 else ""
        workers += " (noisy)" if r.get("noisy") else ""
        workers += " (slow host)" if r.get("slow_host") else ""
        head = f"| {r['run']} | {r['config']}{workers} | {r['n']} | {r['frame_ms']:g} ms"
        if "error" in r:
            lines.append(f"{head} | {r['error']} ||||||||||")
            continue
        L, base = r.get("load") or {}, direct.get(key(r))
        added = []
        for leg in ("uplink_ms", "downlink_ms"):
            if r["config"] == "direct" or not base:
                s = f"{p(L.get(leg), 'p50'):.2f} / {p(L.get(leg), 'p99'):.2f} (abs)"
            else:
                a50 = p(L.get(leg), "p50") - p(base.get(leg), "p50")
                a99 = p(L.get(leg), "p99") - p(base.get(leg), "p99")
                s = f"{a50:+.2f} / **{a99:+.2f}**"
            added.append(s)
        us = us_per_frame(r)
        ref = picows.get(key(r))
        ratio = f"{us / ref:.2f}" if us and ref else "-"
        meter = "-"
        if "ledger_records" in r:
            meter = f"{r['ledger_records']} / {L.get('dones_rx_total')}"
            if r.get("ledger_spilled_only"):
                meter += f" ({r['ledger_spilled_only']} spilled)"
        cpu = r.get("relay_cpu_pct")
        lines.append(
            f"{head} | {added[0]} | {added[1]} | {f'{cpu:.0f}' if cpu else '-'} "
            f"| {f'{us:.1f}' if us else '-'} | {ratio} | {r.get('relay_rss_mb', 0):.0f} "
            f"| {lost(r)} | {meter} | {r.get('loadgen_cpu_pct', 0):.0f} / "
            f"{max(0.0, r.get('others_cpu_pct', 0)):.0f} |"
        )
    return "\n".join(lines)


def idle_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | relay | N idle | fixed MB | fixed vs picows | RSS open MB | KB per session "
        "| CPU ms per open | RSS after close MB (+2 s / +4 s) | returned | lost |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    fixed = {key(r): r.get("relay_rss_fixed_mb") for r in rows if r["config"] == "picows"}
    for r in rows:
        head = f"| {r['run']} | {r['config']} | {r['n']}"
        if "error" in r or "relay_rss_open_mb" not in r:
            lines.append(f"{head} | {r.get('error', 'no figures')} ||||||||")
            continue
        f0, opened = r["relay_rss_fixed_mb"], r["relay_rss_open_mb"]
        late = r["relay_rss_closed_late_mb"]
        ref = fixed.get(key(r))
        vs = f"{f0 - ref:+.0f} MB" if ref is not None else "-"
        grew = opened - f0
        back = f"{100 * (opened - late) / grew:.0f} %" if grew > 0 else "-"
        lines.append(
            f"{head} | {f0:.0f} | {vs} | {opened:.0f} | {r['kb_per_idle_session']:.1f} "
            f"| {r.get('relay_cpu_ms_per_open', float('nan')):.2f} "
            f"| {r['relay_rss_closed_mb']:.0f} / {late:.0f} | {back} | {lost(r)} |"
        )
    return "\n".join(lines)


def report(rows: list[dict[str, Any]]) -> str:
    return idle_table(rows) if rows and rows[0].get("mode") == "idle" else load_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ns", default="500", help="session counts, comma-separated")
    ap.add_argument("--frame-ms", type=int, choices=[20, 100], default=20)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--runs", type=int, default=1, help="repeat every configuration this often")
    ap.add_argument("--workers", type=int, default=1, help="rtgate serve --workers")
    ap.add_argument("--idle", action="store_true", help="memory of N silent sessions (see above)")
    ap.add_argument("--upstream-tls", action="store_true", help="idle: a wss:// upstream (above)")
    ap.add_argument(
        "--budget-for",
        default="",
        help="rtgate builds (labels, comma-separated) whose key has a budget (see above)",
    )
    ap.add_argument("--settle", type=float, default=2.0, help="idle: seconds before each sample")
    ap.add_argument(
        "--rtgate-src",
        action="append",
        default=[],
        help="[LABEL=]DIR: an rtgate checkout",
    )
    ap.add_argument(
        "--rtgate-venv", action="append", default=[], help="[LABEL=]VENV: a venv with rtgate in it"
    )
    ap.add_argument(
        "--anchors",
        action="store_true",
        help="also the minimal aiohttp relay and the aiohttp + picows hybrids (harness/)",
    )
    ap.add_argument(
        "--quiet-pct",
        type=float,
        default=20.0,
        help="before each configuration, wait until the machine's busy CPU is under this "
        "(%% of one core) for 2 s ...",
    )
    ap.add_argument("--quiet-wait", type=float, default=600.0, help="... for at most this (s)")
    ap.add_argument(
        "--noisy-pct",
        type=float,
        default=30.0,
        help="a run is noisy when other jobs used more than this (%% of one core) during its "
        "window; it is then run again, up to --retries times (every attempt is kept in --out), "
        "as is a run on a slow host (above)",
    )
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--only", default="", help="run only these configurations (comma-separated)")
    ap.add_argument(
        "--probe",
        type=Path,
        default=None,
        help="a directory put first on rtgate's PYTHONPATH: a sitecustomize probe "
        "(bench/loop_lag, bench/import_rss)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "relay.jsonl")
    a = ap.parse_args()
    if a.upstream_tls and not a.idle:
        sys.exit("--upstream-tls: with --idle only (the direct connection dials in plain ws://)")
    a.tls = UpstreamTls.make() if a.upstream_tls else None
    a.budget_for = {f"rtgate:{x}" for x in a.budget_for.split(",") if x}
    # A stopped benchmark still stops the relay it started (the finally clauses run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    found = [RtgateBuild.from_src(s) for s in a.rtgate_src]
    found += [RtgateBuild.from_venv(v) for v in a.rtgate_venv]
    if not found:
        found = [RtgateBuild("rtgate", Path(sys.executable), ROOT)]
    builds = {b.name: b for b in found}
    if len(builds) != len(found):
        sys.exit("two rtgate builds share a name: pass checkouts with different directory names")
    configs = [] if a.idle else ["direct"]
    configs += ["picows", *(["aiohttp", "hybrid", "hybrid-direct"] if a.anchors else [])]
    configs += list(builds)
    if a.only:
        configs = [c for c in configs if c in a.only.split(",")]
    for b in found:
        print(f"{b.name}: {b.describe()}", flush=True)
        b.precompile()
    precompile(Path(sys.executable), HARNESS)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    fastest = float("inf")  # the fastest host loop seen so far
    for n in (int(x) for x in a.ns.split(",")):
        for run in range(1, a.runs + 1):
            for name in configs:
                for attempt in range(a.retries + 1):
                    r = run_one(name, n, run, a, builds)
                    r["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                    r["attempt"] = attempt
                    r["noisy"] = r.get("others_cpu_pct", 0.0) > a.noisy_pct
                    fastest = min([fastest, *r.get("host_loop_s", [])])
                    r["slow_host"] = slow_host(r, fastest)
                    with a.out.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(report([*rows, r]).splitlines()[-1], flush=True)
                    time.sleep(1.0)
                    if not (r["noisy"] or r["slow_host"]):
                        break
                rows.append(r)
    print()
    print(report(rows))


if __name__ == "__main__":
    main()
