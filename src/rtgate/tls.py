"""TLS on the gateway's one listener (``tls_certfile``, ``tls_keyfile``): the HTTP routes, the
WebSocket and the engine's own route, for clients that only speak ``wss://`` (the npm ``openai``
package; the Python SDK's beta path without ``websocket_base_url``, docs/protocol.md 0, fact 3).

Upstream dials (``wss://``) share one client context, ``upstream_context``, which the gateway
builds once at start-up (``Gateway.upstream_tls``).

The gateway dials its embedded engine on a loopback port of its own, in plain ``ws://``
(``serving.py``): that dial never leaves the machine, and the engine's route wants the process's
own token.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path

from rtgate.errors import ConfigError


def server_context(certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext | None:
    """The listener's TLS context (settings ``tls_certfile``, ``tls_keyfile``), or None without
    TLS. Raises ``ConfigError`` naming the setting whose file cannot be used."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        missing = "tls_keyfile" if keyfile is None else "tls_certfile"
        raise ConfigError(f"{missing}: TLS needs both tls_certfile and tls_keyfile")
    for name, path in (("tls_certfile", certfile), ("tls_keyfile", keyfile)):
        if not Path(path).is_file():
            raise ConfigError(f"{name}: no such file: {path}")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        name = "tls_keyfile" if _has_cert(certfile) else "tls_certfile"
        raise ConfigError(f"{name}: cannot use {certfile} and {keyfile} for TLS: {exc}") from exc
    return ctx


def _has_cert(certfile: Path) -> bool:
    try:
        ssl.create_default_context(cafile=str(certfile))
    except (ssl.SSLError, OSError):
        return False
    return True


def upstream_context(base_urls: Iterable[str]) -> ssl.SSLContext | None:
    """The client context every ``wss://`` upstream dial verifies against, the system's trust
    (OpenSSL's default paths, so ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` apply); None when no
    upstream in ``base_urls`` is dialled over TLS (the local engine, a loopback test upstream),
    which then never loads the CA bundle.

    One for the gateway, built at start-up: a dial given no context gets a new default one from
    the event loop (uvloop and asyncio both do for ``ssl=True``), which parses the whole CA
    bundle again, on the loop, and keeps it for the connection's life: ~24 ms of the loop's CPU
    and ~830 KB per upstream connection with Debian's 144 CAs (docs/performance.md 9.11).
    OpenSSL contexts are safe to share between connections once configured, and nothing
    configures this one after it is built."""
    if not any(url.startswith(("wss://", "https://")) for url in base_urls):
        return None
    return ssl.create_default_context()
