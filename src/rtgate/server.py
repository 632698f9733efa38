"""``rtgate serve``'s process (``python -m rtgate.server``, re-executed by ``cli.serve``): the
settings, the warnings an operator must see, then one serving process (``rtgate.serving``) or
``--workers N`` of them (``rtgate.workers``). The entry point, not the serving: each of those is
imported only when chosen, so the parent of N workers holds the settings and its workers'
links, not the app it never serves."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import sys

from rtgate.config import Settings, load_settings
from rtgate.errors import ConfigError, GatewayError, report_failed_start
from rtgate.listen import check_port, claim_port
from rtgate.logs import configure_serving_logs
from rtgate.tls import server_context
from rtgate.worker import METRICS_DIR

log = logging.getLogger("rtgate")


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


def missing_key_warnings(settings: Settings) -> list[str]:
    """A provider upstream some model goes to, with no key in its variable: every session
    there would be refused by the provider (a newcomer's find: a Gemini upstream was dialled
    with no key, and said nothing at start-up). OpenAI's own is the default upstream only
    when its key is set (the local engine otherwise), and says so in the summary."""
    on: dict[str, list[str]] = {}
    for model, m in sorted(settings.models.items()):
        on.setdefault(m.upstream, []).append(model)
    return [
        f"upstream {name} ({up.kind}) has no key: set "
        f"{up.api_key_env or 'api_key_env to the variable that holds it'} "
        f"(its models: {', '.join(on[name])})"
        for name, up in sorted(settings.upstreams.items())
        if name in on
        and up.api_key is None
        # Azure and Gemini always take one; an OpenAI-kind upstream without a variable may be
        # a server that asks none (a self-hosted one, a test upstream).
        and (up.kind in ("azure", "gemini") or (up.kind == "openai" and up.api_key_env))
    ]


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


def serve(settings: Settings) -> int:
    """Serve until the drain or stop is over; the exit status (``serve_workers``')."""
    # A certificate the command line named is checked before anything starts.
    server_context(settings.tls_certfile, settings.tls_keyfile)
    # With workers (SO_REUSEPORT), this gateway's claim on its port, held until it exits: two
    # started at once cannot both serve it. Then the port itself, before the store opens and
    # the engine's models load.
    claim = claim_port(settings.port) if settings.workers > 1 else None
    try:
        check_port(settings.host, settings.port)
        return _serve_checked(settings)
    finally:
        if claim is not None:
            claim.close()


def _serve_checked(settings: Settings) -> int:
    configure_serving_logs(settings)
    warnings = [unshared_workers_warning(settings), open_metrics_warning(settings)]
    for warning in (*warnings, *missing_key_warnings(settings)):
        if warning is not None:
            log.warning(warning)
    # One token for every worker: with SO_REUSEPORT a worker's dial to its own engine route
    # may be accepted by a sibling, which must accept it too.
    engine_token = secrets.token_urlsafe(32)
    # frozenlist (aiohttp's signal and middleware lists) is compiled as C++: its extension maps
    # libstdc++ into a process that has no other use for it, ~1 MB resident, to speed up lists
    # read a few times per HTTP request and never per relayed frame. Its documented switch,
    # set before aiohttp is imported (below, or in each worker, which inherits it), picks its
    # pure-Python class (docs/performance.md 9.17). An operator's own setting stands: any
    # non-empty value keeps the pure class, an empty one the extension.
    os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
    if settings.workers == 1:
        # One process keeps its metrics in memory, whatever the environment says: a directory
        # an operator set for other programs would be summed into its scrapes, old runs' too.
        os.environ.pop(METRICS_DIR, None)
        from rtgate.serving import serve_one

        serve_one(settings, engine_token)
        return 0
    if sys.platform == "win32":
        # Workers share the port with SO_REUSEPORT and reach the parent over an inherited
        # socket (pass_fds): neither exists there.
        raise ConfigError("workers: more than 1 is not supported on Windows")
    from rtgate.workers import serve_workers

    return serve_workers(settings, engine_token)


def main() -> int:
    """``rtgate serve``'s process once the CLI has checked its options and re-executed itself
    here (``cli.serve``): the settings from the file and ``RTGATE_*`` variables, as the CLI read
    them. A start-up failure (database, Redis, a file changed since) is one line naming the
    setting, not a traceback, and exit status 2, as the CLI reports it."""
    try:
        return serve(load_settings())
    except GatewayError as err:
        return report_failed_start(err)


if __name__ == "__main__":
    sys.exit(main())
