"""Where a relay spends its CPU: py-spy samples it under the benchmark's load, grouped.

The relay (rtgate, from this checkout or ``--rtgate-src DIR``, or a minimal anchor) and the load
generator run as in ``relay_bench.py``; in the middle of the measured window py-spy records the
relay (``--native``: C frames too; needs ptrace, so root or ``ptrace_scope`` 0) and this script
prints each busy sample's group (system calls, garbage collection, aiohttp, the event loop,
rtgate's own code, ...) and the hottest functions. Samples waiting in ``epoll`` are idle and left
out of the shares.

    python bench/relay_profile.py --n 300 [--frame-ms 20] [--native] [--relay picows]
        [--rtgate-src DIR] [--seconds 10] [--out bench/results/prof.txt]

``--perf``: Linux ``perf`` samples the relay instead (``--call-graph dwarf``, so the stacks go
through the kernel, uvloop, picows and the interpreter, which py-spy separates less well), and
each sample is classed by what its stack holds: a frame's send, the rest of a frame's handling,
reading the sockets, ``call_soon`` callbacks and timers, other threads. ``--out`` is then
perf's data file (``perf report -i`` reads it too).
"""

from __future__ import annotations

import argparse
import gzip
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
    LOADGEN_CPU,
    ROOT,
    Relay,
    load_generator,
    one_relay_build,
    pinned,
    plain_upstream,
    ramp_limit,
    wait_quiet,
)

IDLE = re.compile(r"^(epoll_wait|epoll_pwait|__GI_epoll_wait|select|poll) \(")
GC = re.compile(
    r"^(gc_collect_main|gc_collect_with_callback|collect_with_callback|gc_collect_generations|"
    r"collect_generations|gc_collect_impl|PyGC_Collect|collect) \((gcmodule\.c|gc\.c|libpython)"
)
SYSCALL = re.compile(
    r"^(__)?(libc_)?(write|writev|send|sendto|sendmsg|recv|recvfrom|recvmsg|read|readv|"
    r"epoll_ctl|close|shutdown|accept4?|connect|getsockopt|setsockopt|ioctl|futex|getrandom|"
    r"syscall|clock_gettime|fstat|fcntl|pwrite64|pread64|fsync|fdatasync)(64)? \(",
)
OWN = re.compile(r"\(rtgate/|/src/rtgate/")
#: rtgate's composition roots: every loop callback runs under them, so they say nothing.
ROOTS = re.compile(r"rtgate/(server|cli|__main__)\.py")
#: Packages named in a Python frame's path, in the order they are tested.
PACKAGES = [
    ("rtgate's own code", re.compile(r"\(rtgate/|/src/rtgate/")),
    ("aiohttp", re.compile(r"\(aiohttp/|_websocket/|_http_parser|_http_writer")),
    ("event loop (uvloop / asyncio)", re.compile(r"\(uvloop/|\(asyncio/|\(loop\.c|_asynciomodule")),
    ("metering store (sqlalchemy, aiosqlite, sqlite)", re.compile(r"sqlalchemy|aiosqlite|sqlite")),
    ("json (orjson / json)", re.compile(r"orjson|\(json/")),
    ("logging / metrics", re.compile(r"structlog|prometheus|\(logging/")),
    ("picows", re.compile(r"picows")),
]


def group_of(frames: list[str]) -> str:
    """The group a busy sample is charged to, by its leaf and its innermost Python frame."""
    leaf = frames[-1]
    if any(GC.search(f) for f in frames):
        return "garbage collection"
    if SYSCALL.search(leaf) or (leaf.startswith("0x") and "(libc" in leaf):
        return "system calls (libc)"
    if "(libc" in leaf or "(ld-linux" in leaf or "(linux-vdso" in leaf:
        return "libc, other (malloc, memcpy, unresolved addresses)"
    if "(libssl" in leaf or "(libcrypto" in leaf:
        return "TLS"
    # Native frames of the interpreter are charged to the Python code running them.
    for f in reversed(frames):
        if ".py:" in f or re.search(r"\(loop\.c|_asynciomodule|_websocket/|picows", f):
            for name, rx in PACKAGES:
                if rx.search(f):
                    return name
            return "other Python (stdlib, other packages)"
    return "interpreter (no Python frame)"


def short(frame: str) -> str:
    return re.sub(r":\d+\)", ")", frame)[:110]


def summarise(path: Path, top: int) -> str:
    groups: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = idle = threads = 0
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for line in raw.decode().splitlines():
        stack, _, cnt_s = line.rpartition(" ")
        if not stack:
            continue
        cnt = int(cnt_s)
        frames = stack.split(";")
        if any(f.startswith("Thread._bootstrap") for f in frames[:6]):
            threads += cnt  # worker threads (aiosqlite's, waiting on a queue)
            continue
        if IDLE.search(frames[-1]):
            idle += cnt
            continue
        busy += cnt
        groups[group_of(frames)] += cnt
        leaf[short(frames[-1])] += cnt
        mine = [f for f in frames if OWN.search(f) and not ROOTS.search(f)]
        if mine:
            own[short(mine[-1])] += cnt
    if not busy:
        return f"no busy samples in {path}"

    def pct(c: int) -> str:
        return f"{100 * c / busy:5.1f} %"

    out = [
        f"busy samples of the event-loop thread: {busy} (idle in epoll: {idle}; "
        f"other threads, left out: {threads})",
        "",
        "by group (leaf function, charged to the innermost Python frame when in the interpreter):",
        *(f"{pct(c)}  {name}" for name, c in groups.most_common()),
        "",
        f"top {top} functions (self time):",
        *(f"{pct(c)}  {name}" for name, c in leaf.most_common(top)),
        "",
        "rtgate's innermost function on the stack, below serve() (inclusive of what it calls):",
        *(f"{pct(c)}  {name}" for name, c in own.most_common(10)),
    ]
    return "\n".join(out)


#: ``--perf``: a sample's class, by the first of these its stack contains (its thread first).
PERF_CLASSES = [
    ("a frame's send (the kernel's TCP send)", ("WSListener_on_ws_frame", "__libc_send")),
    ("a frame's handling without its send", ("WSListener_on_ws_frame",)),
    ("callbacks from call_soon (futures, tasks)", ("uv__run_idle",)),
    ("timers", ("uv__run_timers",)),
    ("reading the sockets before a frame, epoll", ("uv__io_poll",)),
]


def perf_summary(data: Path) -> str:
    """The samples of ``perf record`` data by class (``PERF_CLASSES``)."""
    raw = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,ip,sym"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    classes: Counter[str] = Counter()
    for sample in raw.split("\n\n"):
        lines = sample.strip().splitlines()
        if not lines:
            continue
        pid, _, tid = lines[0].split()[0].partition("/")
        stack = " ".join(lines[1:])
        if tid and tid != pid:
            classes["other threads (the store's SQLite thread, the loop's helpers)"] += 1
            continue
        for name, needles in PERF_CLASSES:
            if all(n in stack for n in needles):
                classes[name] += 1
                break
        else:
            classes["the loop, other"] += 1
    total = sum(classes.values())
    if not total:
        return f"no samples in {data}"
    rows = [f"{c:7d}  {100 * c / total:5.1f} %  {name}" for name, c in classes.most_common()]
    return "\n".join([f"perf samples: {total}", *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--relay", default="rtgate", choices=["rtgate", "picows", "aiohttp"])
    ap.add_argument("--rtgate-src", default=None, help="[LABEL=]DIR: a checkout to run rtgate from")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--frame-ms", type=int, choices=[20, 100], default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    ap.add_argument(
        "--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    )
    ap.add_argument("--perf", action="store_true", help="sample with Linux perf (see above)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", type=Path, default=None, help="the raw profile (collapsed stacks)")
    ap.add_argument("--summarise", type=Path, default=None, help="only summarise this raw profile")
    a = ap.parse_args()
    plain_upstream(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally clause stops the relay
    if a.summarise is not None:
        print(perf_summary(a.summarise) if a.perf else summarise(a.summarise, a.top))
        return
    a.workers, a.warmup, a.duration = 1, 3.0, a.seconds + 8
    if a.perf and a.native:
        sys.exit("--native is py-spy's: perf's stacks have the native frames already")
    name, builds = one_relay_build(a.relay, a.rtgate_src)
    suffix = "perf.data" if a.perf else "txt"
    out = a.out or ROOT / "bench" / "results" / f"prof-{name.replace(':', '-')}-{a.n}.{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    wait_quiet(20.0, 600.0)
    relay = Relay.start(name, a, builds)
    try:
        if not relay.ready() or relay.proc is None:
            sys.exit("relay did not start")
        with load_generator(relay, a.n, a, idle=False) as (lg, marks):
            if not marks["WINDOW_START"].wait(ramp_limit(a.n) + a.warmup):
                sys.exit("load generator never reached its window")
            time.sleep(2)
            # The sampler runs beside the load generator, not on the core of the relay it samples
            # (perf's copies of each sample's stack are made in the relay's context, though).
            if a.perf:
                spy = [*pinned(LOADGEN_CPU), "perf", "record", "-F", str(a.rate)]
                spy += ["--call-graph", "dwarf,16384", "-o", str(out), "-p", str(relay.proc.pid)]
                spy += ["--", "sleep", str(int(a.seconds))]
            else:
                spy = [*pinned(LOADGEN_CPU), a.py_spy, "record", "--rate", str(a.rate)]
                spy += ["-d", str(int(a.seconds)), "--format", "raw", "-o", str(out)]
                spy += ["-p", str(relay.proc.pid), *(["--native"] if a.native else [])]
            subprocess.run(spy, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lg.communicate(timeout=a.duration + 60)
    finally:
        relay.stop()
    print(f"raw profile: {out}")
    print(perf_summary(out) if a.perf else summarise(out, a.top))


if __name__ == "__main__":
    main()
