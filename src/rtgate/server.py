"""Running the gateway: one process, or ``--workers N`` processes sharing the port.

Workers bind the same port with ``SO_REUSEPORT`` and the kernel spreads connections over them;
they share the database, and with ``redis_url`` the session limits and the admin API's view of
live sessions; without it each worker counts and sees only its own (a warning says so).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import multiprocessing
import secrets
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web

from rtgate.api.app import create_app, set_local_base_url
from rtgate.api.request_timeouts import app_runner
from rtgate.config import Settings
from rtgate.logs import configure_logging
from rtgate.welcome import summary_lines

log = logging.getLogger("rtgate")


def _provider_secrets(settings: Settings) -> list[str]:
    """Every secret the process holds, for the log filter to strip."""
    held = [u.api_key for u in settings.upstreams.values()]
    held += [settings.admin_token, settings.metrics_token, settings.engine.brain_api_key]
    return [s.get_secret_value() for s in held if s is not None]


def _program() -> str:
    """How the person ran rtgate (``.venv/bin/rtgate`` under make run), for the lines that
    tell them what to type next."""
    argv0 = Path(sys.argv[0])
    return str(argv0) if argv0.name == "rtgate" else "rtgate"


def install_uvloop() -> None:
    if sys.platform != "win32":
        import uvloop

        uvloop.install()


def freeze_startup_heap() -> None:
    """Move everything built at startup (the app, settings, SQLAlchemy, the catalog, ~120k
    objects) out of the cyclic collector's reach: it lives as long as the process, and a full
    collection that walks it stalls every session (measured ~37 ms, a p99 spike under load).
    Sessions' own objects are still collected as usual."""
    gc.collect()
    gc.freeze()


async def serve_async(
    settings: Settings, engine_token: str, sock: socket.socket | None = None
) -> None:
    app = create_app(settings, engine_token=engine_token)
    runner = app_runner(app, settings, handle_signals=False, access_log=None)
    await runner.setup()
    if sock is not None:
        site: web.BaseSite = web.SockSite(runner, sock)
        host, port = sock.getsockname()[:2]
    else:
        site = web.TCPSite(
            runner, settings.host, settings.port, reuse_port=settings.workers > 1, backlog=4096
        )
        host, port = settings.host, settings.port
    await site.start()
    set_local_base_url(app, str(host), int(port))
    freeze_startup_heap()
    shown = f"[{host}]" if ":" in str(host) else host
    for line in summary_lines(settings, f"http://{shown}:{port}", _program()):
        log.info(line)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()


def _worker(settings: Settings, engine_token: str) -> None:
    configure_logging(settings.log_level, _provider_secrets(settings), settings.log_format)
    install_uvloop()
    asyncio.run(serve_async(settings, engine_token))


def unshared_workers_warning(settings: Settings) -> str | None:
    """What an operator must know when workers share no Redis, or None."""
    if settings.workers == 1 or settings.redis_url:
        return None
    return (
        f"{settings.workers} workers without redis_url: each counts live sessions and session "
        "starts on its own, so a key's max_sessions and sessions_per_minute hold per worker "
        f"(up to {settings.workers} times the limit), and the admin API sees one worker's live "
        "sessions; set redis_url (RTGATE_REDIS_URL) to share them"
    )


def loopback(host: str) -> bool:
    """Whether ``host`` (the listening address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_metrics_warning(settings: Settings) -> str | None:
    """What an operator must know when ``/metrics`` is open beyond this machine, or None."""
    if settings.metrics_token is not None or loopback(settings.host):
        return None
    return (
        f"/metrics is open to anyone who can reach {settings.host}:{settings.port} (key ids, "
        "models, sessions and spend): set RTGATE_METRICS_TOKEN to require a Bearer token"
    )


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level, _provider_secrets(settings), settings.log_format)
    for warning in (unshared_workers_warning(settings), open_metrics_warning(settings)):
        if warning is not None:
            log.warning(warning)
    # One token for every worker: with SO_REUSEPORT a worker's dial to its own engine route
    # may be accepted by a sibling, which must accept it too.
    engine_token = secrets.token_urlsafe(32)
    if settings.workers == 1:
        install_uvloop()
        asyncio.run(serve_async(settings, engine_token))
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(settings, engine_token), name=f"rtgate-worker-{i}")
        for i in range(settings.workers)
    ]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None:
                p.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
