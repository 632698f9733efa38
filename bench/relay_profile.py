"""Where a relay spends its CPU per frame: py-spy samples a relay under the benchmark's load.

The relay (rtgate, or one of the harness's minimal relays) runs pinned to CPU 1 and the load
generator to CPU 0, as in ``relay_bench.py``; py-spy records the relay for ``--seconds`` in the
middle of the measured window and this script prints the hottest functions (self time) and a
few inclusive buckets, as a share of busy samples.

    python bench/relay_profile.py --relay rtgate --n 200 [--native] [--py-spy PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_bench import (
    DEFAULT_HARNESS,
    LOADGEN_CPU,
    RELAY_CPU,
    ROOT,
    UP_PORT,
    Rtgate,
    wait_port,
)

#: Inclusive buckets: a sample counts once per bucket whose pattern matches any of its frames.
BUCKETS = {
    "Bridge pumps (incl. everything below)": r"_upstream_to_client|_client_to_upstream",
    "aiohttp receive()": r"^receive \(aiohttp",
    "aiohttp send_str/send_frame": r"send_str \(aiohttp|send_frame \(aiohttp",
    "aiohttp reader feed_data (parse)": r"feed_data \(aiohttp|_feed_data",
    "heartbeat reset": r"_flush_heartbeat_reset|_reset_heartbeat|_on_data_received",
    "RelaySession.on_upstream_text": r"on_upstream_text",
    "guard.check": r"^check \(rtgate",
    "clock.now": r"^now \(rtgate",
    "ledger / store": r"rtgate/(metering|store)/",
    "metrics": r"rtgate/metrics|prometheus",
    "asyncio task step / loop": r"_run_once|run_forever|Task\.__step|__step",
}


def summarise(path: Path, top: int) -> str:
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = threads = 0
    compiled = {k: re.compile(v) for k, v in BUCKETS.items()}
    for line in path.read_text().splitlines():
        stack, _, cnt_s = line.rpartition(" ")
        if not stack:
            continue
        cnt = int(cnt_s)
        frames = stack.split(";")
        if any(f.startswith("Thread._bootstrap") for f in frames[:4]):
            # Worker threads (aiosqlite's waits on a queue; py-spy counts that as busy).
            threads += cnt
            continue
        total += cnt
        leaf[re.sub(r":\d+\)", ")", frames[-1])[:120]] += cnt
        for name, rx in compiled.items():
            if any(rx.search(f) for f in frames):
                incl[name] += cnt
    out = [f"event-loop thread samples: {total} (other threads, left out: {threads})"]
    out += ["", "self time (leaf):"]
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in leaf.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"{100 * incl[k] / total:5.1f}%  {k}" for k in BUCKETS]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--relay", default="rtgate", choices=["rtgate", "aiohttp", "picows"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    ap.add_argument(
        "--perf",
        action="store_true",
        help="sample with Linux perf instead (C and kernel symbols; Python frames are opaque)",
    )
    ap.add_argument("--harness", type=Path, default=DEFAULT_HARNESS)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    env = None
    if a.relay == "rtgate":
        port = 8090
        rt = Rtgate(port, 1)
        env = rt.env
        cmd = rt.command()
        headers = [f"Authorization: Bearer {rt.key}"]
    else:
        port = {"aiohttp": 8002, "picows": 8004}[a.relay]
        cmd = [
            "taskset",
            "-c",
            RELAY_CPU,
            sys.executable,
            str(a.harness / f"relay_{a.relay}.py"),
            "--port",
            str(port),
            "--upstream",
            f"ws://127.0.0.1:{UP_PORT}",
            "--loop",
            "uvloop",
        ]
        headers = []
    relay = subprocess.Popen(cmd, env=env, start_new_session=True)
    out = a.out or ROOT / "bench" / "results" / f"prof-{a.relay}-{a.n}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not wait_port(port, 30):
            sys.exit("relay did not start")
        lg_cmd = [
            "taskset",
            "-c",
            LOADGEN_CPU,
            sys.executable,
            str(a.harness / "loadgen.py"),
            "--url",
            f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
            "--up-port",
            str(UP_PORT),
            "--n",
            str(a.n),
            "--warmup",
            "3",
            "--duration",
            str(a.seconds + 6),
        ]
        for h in headers:
            lg_cmd += ["--header", h]
        lg = subprocess.Popen(lg_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3 + a.n / 200 + 4)
        # The py-spy process is pinned with the load generator, not with the relay it samples.
        spy = [
            "taskset",
            "-c",
            LOADGEN_CPU,
            a.py_spy,
            "record",
            "--rate",
            str(a.rate),
            "-d",
            str(int(a.seconds)),
            "--format",
            "raw",
            "-o",
            str(out),
            "-p",
            str(relay.pid),
        ]
        if a.native:
            spy.append("--native")
        if a.perf:
            out = out.with_suffix(".perf.data")
            spy = ["taskset", "-c", LOADGEN_CPU, "perf", "record", "-q", "-F", "999", "-g"]
            spy += ["-o", str(out), "-p", str(relay.pid), "--", "sleep", str(a.seconds)]
        subprocess.run(spy, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lg.wait(120)
    finally:
        os.killpg(relay.pid, signal.SIGTERM)
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(relay.pid, signal.SIGKILL)
            relay.wait()
    if a.perf:
        report = ["perf", "report", "-i", str(out), "--no-children", "--stdio", "-g", "none"]
        report += ["--sort", "dso,sym", "--percent-limit", "0.4"]
        print(subprocess.run(report, capture_output=True, text=True).stdout)
    else:
        print(summarise(out, a.top))


if __name__ == "__main__":
    main()
