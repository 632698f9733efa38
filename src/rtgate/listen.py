"""The gateway's one port (settings ``host``, ``port``): a port already taken is one line
naming it and exit status 2, as any other start-up failure (``errors.report_failed_start``).

``check_port`` tries the port before anything loads (the store, the engine's models), so a
second gateway started on a busy port says so at once. It binds every address the listener
will (``host`` resolved as asyncio's ``create_server`` resolves it: empty means every
interface), without ``SO_REUSEPORT``: ``--workers N`` binds the port N times with it
(``serving.py``), and Linux lets any process of the same user that sets it share the port, so a
gateway started beside another (or beside a server that shares its port) would split its
connections with it without a word. The check closes its sockets before the listener binds:
two gateways started in the same instant can both pass it. The real bind may still fail;
``listen_failed`` says that the same way.
"""

from __future__ import annotations

import errno
import socket

from rtgate.errors import ConfigError


def shown(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (``[::1]:8080``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_failed(host: str, port: int, err: OSError) -> ConfigError:
    """The start-up error for an address the gateway cannot listen on, naming the setting at
    fault: ``host`` for a name that does not resolve or an address this machine does not
    have, else ``port``."""
    where = shown(host, port)
    if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"host: cannot listen on {where}: {err.strerror or err}")
    if err.errno == errno.EADDRINUSE:
        why = "the address is already in use (another gateway or server is listening there)"
    elif err.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges)"
    else:
        why = err.strerror or str(err)
    return ConfigError(f"port: cannot listen on {where}: {why}")


def check_port(host: str, port: int) -> None:
    """Raises ``ConfigError`` if ``host``:``port`` cannot be listened on by this process alone.
    Port 0 (the system picks one) is always free."""
    if port == 0:
        return
    probes: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(found):
            probe = socket.socket(family, kind, proto)
            probes.append(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's
            probe.bind(address)
            probe.listen()
    except OSError as err:
        raise listen_failed(host, port, err) from None
    finally:
        for probe in probes:
            probe.close()
