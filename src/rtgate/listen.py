"""The gateway's one port (settings ``host``, ``port``): a port already taken is one line
naming it and exit status 2, as any other start-up failure (``errors.report_failed_start``).

``check_port`` tries the port before anything loads (the store, the engine's models), so a
second gateway started on a busy port says so at once. It binds without ``SO_REUSEPORT``:
``--workers N`` binds the port N times with it (``serving.py``), and Linux lets any process of
the same user that sets it share the port, so two gateways (or a gateway and another server)
would split its connections between them without a word. The real bind may still lose a race
for the port; ``listen_failed`` says that the same way.
"""

from __future__ import annotations

import errno
import socket

from rtgate.errors import ConfigError


def listen_failed(host: str, port: int, err: OSError) -> ConfigError:
    """The start-up error for a port the gateway cannot listen on."""
    if err.errno == errno.EADDRINUSE:
        why = "the address is already in use (another gateway or server is listening there)"
    elif err.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges)"
    else:
        why = err.strerror or str(err)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ConfigError(f"port: cannot listen on {where}: {why}")


def check_port(host: str, port: int) -> None:
    """Raises ``ConfigError`` if ``host``:``port`` cannot be listened on by this process alone.
    Port 0 (the system picks one) is always free."""
    if port == 0:
        return
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"host: cannot listen on {host}: {err.strerror}") from None
    family = found[0][0]
    try:
        probe = socket.create_server((host, port), family=family)  # SO_REUSEADDR, as asyncio's
    except OSError as err:
        raise listen_failed(host, port, err) from None
    probe.close()
