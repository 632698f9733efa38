"""Relay benchmark: N concurrent sessions through rtgate and directly, in the same run.

Each session sends a 20 ms audio append every 20 ms and receives an audio delta every 20 ms, a
transcript delta every 100 ms and a ``response.done`` every 2 s (111 frames/s per session), as in
``docs/performance.md``. The load generator (fake upstream + all clients in one picows process,
``../shared/perf/loadgen.py``) is pinned to CPU 0 and the relay under test to CPU 1. Added latency
is the relay run minus the direct run at the same N, per percentile, in the worse direction.

Optional anchors run the harness's minimal relays (aiohttp, picows) under the same load, and
``relay_hybrid.py`` (aiohttp serving the client, picows dialling the upstream).

    python bench/relay_bench.py --ns 50,200 [--anchors] [--workers 1] [--out bench/results/x.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HARNESS = ROOT.parent / "shared" / "perf"
UP_PORT = 9000
RELAY_CPU, LOADGEN_CPU = "1", "0"
FRAMES_PER_SESSION = 111  # 50 up + 50 audio + 10 transcript + ~1 done/created per second


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


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a process that ended used no more
            t = p.cpu_times()
            total += t.user + t.system
    return total


def rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 1e6


class Rtgate:
    """rtgate started the way an operator starts it, with a fresh key and data directory."""

    def __init__(self, port: int, workers: int) -> None:
        self.port = port
        self.workers = workers
        self.home = Path(tempfile.mkdtemp(prefix="rtgate-bench-"))
        self.env = {
            **os.environ,
            "RTGATE_HOME": str(self.home),
            "RTGATE_OPENAI_BASE_URL": f"ws://127.0.0.1:{UP_PORT}/v1",
            "OPENAI_API_KEY": "sk-bench-provider-key",
            "RTGATE_LOG_LEVEL": "warning",
        }
        for var in ("RTGATE_DATABASE_URL", "RTGATE_CONFIG"):
            self.env.pop(var, None)
        out = subprocess.run(
            [sys.executable, "-m", "rtgate", "keys", "create", "--name", "bench"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        self.key = out.stdout.strip().splitlines()[-1]

    def command(self) -> list[str]:
        cpus = RELAY_CPU if self.workers == 1 else "0-1"
        return [
            "taskset",
            "-c",
            cpus,
            sys.executable,
            "-m",
            "rtgate",
            "serve",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def records(self) -> int:
        db = sqlite3.connect(self.home / "rtgate.db")
        try:
            return int(db.execute("SELECT count(*) FROM usage_records").fetchone()[0])
        finally:
            db.close()


def run_one(name: str, n: int, a: argparse.Namespace, harness: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"config": name, "n": n}
    relay: subprocess.Popen[bytes] | None = None
    rt: Rtgate | None = None
    headers: list[str] = []
    if name == "direct":
        port = UP_PORT
    elif name == "rtgate":
        port = 8090
        rt = Rtgate(port, a.workers)
        headers = [f"Authorization: Bearer {rt.key}"]
        relay = subprocess.Popen(rt.command(), env=rt.env, start_new_session=True)
    else:
        script = {
            "aiohttp": str(harness / "relay_aiohttp.py"),
            "picows": str(harness / "relay_picows.py"),
            "hybrid": str(ROOT / "bench" / "relay_hybrid.py"),
            "hybrid-direct": str(ROOT / "bench" / "relay_hybrid.py"),
        }[name]
        port = {"aiohttp": 8002, "picows": 8004, "hybrid": 8006, "hybrid-direct": 8008}[name]
        relay = subprocess.Popen(
            [
                "taskset",
                "-c",
                RELAY_CPU,
                sys.executable,
                script,
                "--port",
                str(port),
                "--upstream",
                f"ws://127.0.0.1:{UP_PORT}",
                "--loop",
                "uvloop",
                *(["--down-direct"] if name == "hybrid-direct" else []),
            ],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        if relay is not None and not wait_port(port, 30):
            res["error"] = "relay did not start"
            return res
        time.sleep(0.5)
        relay_ps = psutil.Process(relay.pid) if relay is not None else None
        cmd = [
            "taskset",
            "-c",
            LOADGEN_CPU,
            sys.executable,
            str(harness / "loadgen.py"),
            "--url",
            f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
            "--up-port",
            str(UP_PORT),
            "--n",
            str(n),
            "--warmup",
            str(a.warmup),
            "--duration",
            str(a.duration),
            "--label",
            name,
        ]
        for h in headers:
            cmd += ["--header", h]
        lg = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started, ended = threading.Event(), threading.Event()

        def read_err() -> None:
            assert lg.stderr is not None
            for line in lg.stderr:
                if line.startswith("WINDOW_START"):
                    started.set()
                elif line.startswith("WINDOW_END"):
                    ended.set()

        threading.Thread(target=read_err, daemon=True).start()
        limit = 60 + n / 200 + a.warmup + a.duration + 40
        if not started.wait(limit):
            res["error"] = "load generator never reached its window"
        else:
            c0 = cpu_seconds(tree(relay_ps)) if relay_ps else 0.0
            t0 = time.monotonic()
            ended.wait(a.duration + 30)
            dt = time.monotonic() - t0
            if relay_ps:
                procs = tree(relay_ps)
                res["relay_cpu_pct"] = 100.0 * (cpu_seconds(procs) - c0) / dt
                res["relay_rss_mb"] = rss_mb(procs)
        out, _ = lg.communicate(timeout=limit)
        res["load"] = json.loads(out.strip().splitlines()[-1])
    finally:
        if relay is not None:
            time.sleep(0.5)
            os.killpg(relay.pid, signal.SIGTERM)
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(relay.pid, signal.SIGKILL)
                relay.wait()
    if rt is not None:
        res["ledger_records"] = rt.records()
    return res


def pct(d: dict[str, Any] | None, k: str) -> float:
    return float((d or {}).get(k) or 0.0)


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| relay | N | up p50/p99 ms | down p50/p99 ms | added p50/p99 ms | CPU % of a core "
        "| CPU per session | µs/frame | RSS MB | frames/s (of sent) | metered |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    direct = {r["n"]: r for r in rows if r["config"] == "direct"}
    for r in rows:
        L = r.get("load") or {}
        if "error" in r:
            lines.append(f"| {r['config']} | {r['n']} | {r['error']} |")
            continue
        u, d = L.get("uplink_ms"), L.get("downlink_ms")
        base = direct.get(r["n"], {}).get("load") or {}
        added = "-"
        if r["config"] != "direct" and base:
            a50 = max(
                pct(u, "p50") - pct(base.get("uplink_ms"), "p50"),
                pct(d, "p50") - pct(base.get("downlink_ms"), "p50"),
            )
            a99 = max(
                pct(u, "p99") - pct(base.get("uplink_ms"), "p99"),
                pct(d, "p99") - pct(base.get("downlink_ms"), "p99"),
            )
            added = f"**{a50:+.2f} / {a99:+.2f}**"
        cpu = r.get("relay_cpu_pct")
        fps = L.get("up_rx_appends_per_s", 0) + L.get("down_rx_frames_per_s", 0)
        sent = r["n"] * FRAMES_PER_SESSION
        per_session = f"{cpu / r['n']:.3f} %" if cpu else "-"
        us_frame = f"{cpu * 1e4 / fps:.1f}" if cpu and fps else "-"
        meter = "-"
        if "ledger_records" in r:
            meter = f"{r['ledger_records']} / {L.get('dones_rx_total')} done"
        lines.append(
            f"| {r['config']} | {r['n']} | {pct(u, 'p50'):.2f} / {pct(u, 'p99'):.2f} "
            f"| {pct(d, 'p50'):.2f} / {pct(d, 'p99'):.2f} | {added} "
            f"| {cpu or 0:.0f} | {per_session} | {us_frame} | {r.get('relay_rss_mb', 0):.0f} "
            f"| {fps:,.0f} ({100 * fps / sent:.0f}%) | {meter} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ns", default="50,200")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--anchors",
        action="store_true",
        help="also run the harness's minimal aiohttp and picows relays, and the aiohttp server "
        "+ picows upstream one (bench/relay_hybrid.py)",
    )
    ap.add_argument("--harness", type=Path, default=DEFAULT_HARNESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "relay.jsonl")
    a = ap.parse_args()
    if not (a.harness / "loadgen.py").exists():
        sys.exit(f"load generator not found in {a.harness} (pass --harness DIR)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    anchors = ["aiohttp", "picows", "hybrid", "hybrid-direct"]
    configs = ["direct", "rtgate"] + (anchors if a.anchors else [])
    rows = []
    for n in (int(x) for x in a.ns.split(",")):
        for name in configs:
            r = run_one(name, n, a, a.harness)
            r["workers"] = a.workers if name == "rtgate" else 1
            r["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            rows.append(r)
            with a.out.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(report([x for x in rows if x["n"] == n]).splitlines()[-1], flush=True)
            time.sleep(1.0)
    print()
    print(report(rows))


if __name__ == "__main__":
    main()
