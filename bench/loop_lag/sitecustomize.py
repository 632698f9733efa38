"""What stalls the relay's event loop, and what was running then: a probe for ``rtgate.server``.

Put this directory first on the server's ``PYTHONPATH`` (``relay_bench.py --probe
bench/loop_lag``) and Python imports it at start-up as ``sitecustomize``. It logs, with the
wall-clock time of each, to ``LAG_OUT`` (``/tmp/loop-lag.out``, rewritten every 2 s):

* ``lag MS``: a 1 ms timer of the main thread's loop that ran more than ``LAG_MS`` (1.5) late;
* ``gc GEN MS``: a collection that took more than 0.5 ms (``gc.callbacks``);
* ``batch ROWS MS CPU_MS``: a ledger batch that took the SQLite writer thread more than 1 ms
  (``SqliteWriter._run``, wall and the thread's CPU);
* ``loan MS STACKS``: a look of a ``rtgate.gil.Lender`` that blocked the loop more than 0.5 ms
  (a loan), with the innermost frames of every other thread as it ended.

docs/performance.md 9.15 read it: a late tick right after a 5 ms loan whose worker was idle
at its queue, or after a slow batch. The timer and the hooks cost the loop ~1,000 callbacks
a second; compare runs with the probe only with each other.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback
from typing import Any

OUT = os.environ.get("LAG_OUT", "/tmp/loop-lag.out")
LAG_MS = float(os.environ.get("LAG_MS", "1.5"))
events: list[tuple[Any, ...]] = []
_gc_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _gc_started[0]) * 1e3
    if ms > 0.5:
        events.append((time.time(), "gc", info["generation"], round(ms, 2)))


def _tick_on(loop: Any) -> None:
    """The 1 ms timer, on the main thread's loop only."""
    if threading.current_thread() is not threading.main_thread():
        return
    due = [time.perf_counter() + 0.001]

    def tick() -> None:
        now = time.perf_counter()
        late = (now - due[0]) * 1e3
        if late > LAG_MS:
            events.append((time.time(), "lag", round(late, 2)))
        due[0] = now + 0.001
        loop.call_later(0.001, tick)

    loop.call_later(0.001, tick)


def _hook_uvloop() -> None:
    """Every loop uvloop makes gets the timer: ``rtgate.serving`` installs uvloop's policy, whose
    loops come from the module's ``new_event_loop``."""
    import uvloop

    make = uvloop.new_event_loop

    def new_event_loop() -> Any:
        loop = make()
        _tick_on(loop)
        return loop

    uvloop.new_event_loop = new_event_loop


def _when_imported(name: str, attr: str) -> Any:
    """The module once its body has defined ``attr``."""
    while name not in sys.modules or not hasattr(sys.modules[name], attr):
        time.sleep(0.01)
    return sys.modules[name]


def _hook_writer() -> None:
    mod = _when_imported("rtgate.store.sqlite_writer", "SqliteWriter")
    run = mod.SqliteWriter._run

    def timed(self: Any, work: list[Any]) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            run(self, work)
        finally:
            ms = (time.perf_counter() - wall) * 1e3
            if ms > 1.0:
                rows = sum(len(r) for _, r in work)
                cpu_ms = (time.thread_time() - cpu) * 1e3
                events.append((time.time(), "batch", rows, round(ms, 2), round(cpu_ms, 2)))

    mod.SqliteWriter._run = timed


def _hook_lender() -> None:
    mod = _when_imported("rtgate.gil", "Lender")
    look = mod.Lender._look

    def timed(self: Any, loop: Any) -> None:
        started = time.perf_counter()
        look(self, loop)
        ms = (time.perf_counter() - started) * 1e3
        if ms > 0.5:
            me = threading.get_ident()
            stacks = [
                "|".join(f"{f.name}:{f.lineno}" for f in traceback.extract_stack(frame)[-3:])
                for tid, frame in sys._current_frames().items()
                if tid != me
            ]
            events.append((time.time(), "loan", round(ms, 2), " ## ".join(stacks)))

    mod.Lender._look = timed


def _dump() -> None:
    while True:
        time.sleep(2)
        if events:
            with open(OUT, "w") as out:
                for e in list(events):
                    out.write(" ".join(str(x).replace(" ", "_") for x in e) + "\n")


gc.callbacks.append(_on_gc)
_hook_uvloop()
for target in (_hook_writer, _hook_lender, _dump):
    threading.Thread(target=target, daemon=True).start()
