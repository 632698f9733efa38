"""The gateway's one port (settings ``host``, ``port``): a port already taken is one line
naming it and exit status 2, as any other start-up failure (``errors.report_failed_start``).

``check_port`` tries the port before anything loads (the store, the engine's models), so a
second gateway started on a busy port says so at once. It binds every address the listener
will (``host`` resolved as asyncio's ``create_server`` resolves it: empty means every
interface), without ``SO_REUSEPORT``: ``--workers N`` binds the port N times with it
(``serving.py``), and Linux lets any process of the same user that sets it share the port, so a
gateway started beside another (or beside a server that shares its port) would split its
connections with it without a word. The check closes its sockets before the listener binds,
so two gateways started in the same instant could both pass it and, both with ``--workers N``,
share the port (one process binds without ``SO_REUSEPORT``: of two, the second bind fails, and
says so). ``claim_port`` closes that window between two rtgate gateways with workers on Linux:
each holds a name for its port (an abstract Unix socket, released by the kernel when the
process ends) for its whole life, and the second to ask is told. The real bind may still fail;
``listen_failed`` says that the same way.
"""

from __future__ import annotations

import errno
import socket
import sys

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


def claim_port(port: int) -> socket.socket | None:
    """This machine's claim on ``port`` for this gateway, to hold until it exits; ``ConfigError``
    if another rtgate gateway holds it, starting or serving. None where it cannot be taken (no
    Linux abstract socket names, Unix sockets forbidden to the process, port 0): a guard, not a
    condition of serving. By port, not address: one gateway on every interface beside another
    on one address would share the port with ``SO_REUSEPORT``. "This machine" is its network
    namespace, as for the port itself."""
    if port == 0 or not sys.platform.startswith("linux"):
        return None
    try:
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        claim.bind(f"\0rtgate-port-{port}")
    except OSError as err:
        claim.close()
        if err.errno != errno.EADDRINUSE:
            return None
        raise ConfigError(
            f"port: cannot listen on port {port}: another rtgate gateway on this machine is"
            " starting or serving on it"
        ) from None
    return claim
