"""Run any tool against a relay under the benchmark's load: ``strace -c``, ``perf``, ``py-spy``.

The relay (rtgate from ``--rtgate-src DIR``, or a minimal anchor) and the load generator run as
in ``relay_bench.py``; two seconds into the measured window the command after ``--`` runs, with
``{pid}`` replaced by the relay's process id (the tool runs on the load generator's core, as
``relay_profile.py`` runs py-spy). Its output is printed; the relay's CPU over the tool's run
is printed beside it, so a count per frame can be read off (frames/s are the load's: N x 2 x
1000 / frame-ms).

    python bench/relay_probe.py --relay picows --n 300 -- strace -c -f -p {pid}
    python bench/relay_probe.py --rtgate-src DIR --n 300 -- perf record -g -p {pid} -o x.data
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_bench import (
    LOADGEN_CPU,
    Relay,
    cpu_seconds,
    load_generator,
    one_relay_build,
    pinned,
    plain_upstream,
    ramp_limit,
    wait_quiet,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--relay", default="rtgate", choices=["rtgate", "picows", "aiohttp"])
    ap.add_argument("--rtgate-src", default=None, help="[LABEL=]DIR: a checkout to run rtgate from")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--frame-ms", type=int, choices=[20, 100], default=20)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the tool may take")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the tool, with {pid}")
    a = ap.parse_args()
    plain_upstream(a)
    tool = [x for x in a.command if x != "--"]
    if not tool:
        sys.exit("give the tool's command after --")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally clause stops the relay
    a.workers, a.warmup, a.duration = 1, 3.0, a.seconds + 8
    name, builds = one_relay_build(a.relay, a.rtgate_src)
    wait_quiet(20.0, 300.0)
    relay = Relay.start(name, a, builds)
    try:
        if not relay.ready() or relay.proc is None:
            sys.exit("relay did not start")
        with load_generator(relay, a.n, a, idle=False) as (lg, marks):
            if not marks["WINDOW_START"].wait(ramp_limit(a.n) + a.warmup):
                sys.exit("load generator never reached its window")
            time.sleep(2)
            procs = relay.procs()
            target = max(procs, key=lambda p: p.memory_info().rss)  # the serving process
            cmd = [*pinned(LOADGEN_CPU), *(x.replace("{pid}", str(target.pid)) for x in tool)]
            (u0, s0), t0 = cpu_seconds([target]), time.monotonic()
            subprocess.run(cmd, timeout=a.seconds + 30)
            (u1, s1), dt = cpu_seconds([target]), time.monotonic() - t0
            fps = a.n * 2 * 1000 / a.frame_ms
            print(
                f"relay {name} pid {target.pid}: {100 * (u1 - u0) / dt:.0f} % user + "
                f"{100 * (s1 - s0) / dt:.0f} % sys over {dt:.1f} s; "
                f"{fps:.0f} frames/s offered, {(u1 + s1 - u0 - s0) * 1e6 / dt / fps:.1f} µs/frame"
            )
            lg.communicate(timeout=a.duration + 60)
    except psutil.Error as exc:
        sys.exit(f"relay process: {exc}")
    finally:
        relay.stop()


if __name__ == "__main__":
    main()
