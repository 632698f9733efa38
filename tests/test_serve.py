"""``rtgate serve`` as a process: workers sharing the port, a graceful drain (SIGTERM or the admin
API) that cuts no live session before its deadline, and a second signal that ends them at once."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import psutil
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from rtgate.config import Settings, fingerprint, load_settings
from rtgate.errors import ConfigError
from rtgate.listen import check_port, claim_port
from rtgate.relay.picows_leg import CLOSE_TIMEOUT
from rtgate.server import unshared_workers_warning
from rtgate.serving import serve_async
from rtgate.worker import CLOSE, DRAIN, DRAINED, STOP, ParentLink
from rtgate.workers import ALIVE, Workers, forget_dead_runs, held_while_alive
from tests.polling import until
from tests.process import (
    cli_json,
    create_key,
    free_port,
    gateway_env,
    kill_tree,
    readiness_settles,
    wait_ready,
)
from tests.provider import PROVIDER_KEY, FakeProvider, emit_response_done


@pytest.mark.parametrize(
    ("upstream", "second"),
    [("provider", signal.SIGTERM), ("local-engine", signal.SIGINT)],
)
async def test_workers_share_the_port_and_a_second_signal_shuts_down_at_once(
    tmp_path: Path, provider: FakeProvider, upstream: str, second: signal.Signals
) -> None:
    port = free_port()
    env = provider.gateway_env(
        tmp_path / "home",
        port,
        OPENAI_API_KEY=PROVIDER_KEY if upstream == "provider" else "",
    )
    key = create_key(env, "w")
    log_file = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtgate", "serve", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    try:
        await wait_ready(port, proc)
        await asyncio.sleep(0.5)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) >= 2
        # The parent holds the port's claim while its workers serve.
        with pytest.raises(ConfigError, match="another rtgate gateway"):
            claim_port(port)
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        conns = [
            await connect(url, additional_headers={"Authorization": f"Bearer {key}"})
            for _ in range(16)
        ]
        for ws in conns:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
        # Whichever worker answers a scrape, it counts every worker's sessions (a newcomer's
        # find: each answered for itself, and Prometheus read a change of worker as a reset).
        async with aiohttp.ClientSession() as http:
            for _ in range(6):
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    scraped = {
                        (s.name, tuple(sorted(s.labels.items()))): s.value
                        for fam in text_string_to_metric_families(await resp.text())
                        for s in fam.samples
                    }
                assert scraped[("rtgate_live_sessions", ())] == 16
                assert (
                    scraped[("rtgate_sessions_started_total", (("model", "gpt-realtime"),))] == 16
                )
        # The first SIGTERM drains (every worker stops taking sessions, the live ones go on);
        # a second one, or SIGINT, ends them now: an error event, then 1001.
        proc.send_signal(signal.SIGTERM)
        await readiness_settles(port, 503)
        proc.send_signal(second)
        stopped = time.monotonic()
        for ws in conns:
            async with asyncio.timeout(10):
                heard = [orjson.loads(msg) async for msg in ws]
            # Told why first (as every session the gateway ends), then going away.
            assert [e["error"]["code"] for e in heard] == ["server_shutting_down"]
            assert (ws.close_code, ws.close_reason) == (1001, "server_error.server_shutting_down")
        assert await asyncio.to_thread(proc.wait, 15) == 0
        # At once: no leg waits out its close timeout (CLOSE_TIMEOUT, 5 s) for a close that an
        # aiohttp-served end (the local engine's) no longer reads once aiohttp's clean-up began.
        assert time.monotonic() - stopped < CLOSE_TIMEOUT - 1
    finally:
        kill_tree(proc)
    log_file.close()
    logs = (tmp_path / "gateway.log").read_text()
    # Where the gateway serves, said once (by the first worker), not once per worker.
    assert logs.count("is ready at http://127.0.0.1") == 1
    assert PROVIDER_KEY not in logs and key not in logs
    # Workers without Redis count a key's limits each on their own: the operator is told.
    assert "2 workers without redis_url" in logs


#: What a serving process has no use for (docs/performance.md 9.3): the CLI itself
#: (``rtgate serve`` re-executes itself without it), its tables and the tracebacks structlog
#: would render with them; SQLAlchemy (the store's queries are SQL text, 9.8), greenlet and
#: aiosqlite (SQLite runs in the store's thread); PostgreSQL's driver; multiprocessing (a worker
#: of ``--workers N`` is a process of its own, ``rtgate.worker``); the TOML parser, when no file
#: is read;
#: frozenlist's C++ extension, which maps libstdc++ (``rtgate.server`` picks its pure class).
NOT_SERVING = (
    "rich",
    "pygments",
    "sqlalchemy",
    "greenlet",
    "aiosqlite",
    "asyncpg",
    "typer",
    "click",
    "rtgate.cli",
    # Settings, bodies and views are msgspec structs: pydantic is the dev tools' (the openai SDK's).
    "pydantic",
    "pydantic_core",
    "multiprocessing",
    "tomllib",
    "frozenlist._frozenlist",
)


def list_modules_at_exit(env: dict[str, str], where: Path) -> None:
    """Have every Python process started with ``env`` write the modules it had loaded to
    ``where/modules-PID.txt`` as it exits. ``rtgate serve`` re-executes itself (``cli.serve``),
    so the listing comes from a ``sitecustomize`` on its path: the CLI's process image is
    replaced before its exit handlers could run, the server's (and its workers') write it."""
    probe = where / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        f"out = os.path.join({str(where)!r}, f'modules-{{os.getpid()}}.txt')\n"
        "atexit.register(lambda: open(out, 'w').write('\\n'.join(sys.modules)))\n"
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(probe), env.get("PYTHONPATH")) if p)


def modules_of(where: Path, pid: int) -> set[str]:
    return set((where / f"modules-{pid}.txt").read_text().splitlines())


async def modules_of_a_serving_gateway(
    tmp_path: Path, provider: FakeProvider, database_url: str | None = None
) -> set[str]:
    """The modules ``rtgate serve`` had loaded when it exited, after one session opened and
    closed: the store looked its key up and wrote its rows."""
    port = free_port()
    env = provider.gateway_env(tmp_path / "home", port)
    # What the server sets for itself must not arrive from this process's environment.
    env.pop("FROZENLIST_NO_EXTENSIONS", None)
    # One process keeps its metrics in memory, even where the environment names a directory
    # for prometheus-client's multiprocess files (another program's: never summed into ours).
    elsewhere = tmp_path / "someone-elses-metrics"
    elsewhere.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(elsewhere)
    if database_url is not None:
        env["RTGATE_DATABASE_URL"] = database_url
    key = create_key(env, "m")
    list_modules_at_exit(env, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtgate", "serve"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        await wait_ready(port, proc)
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
        assert list(elsewhere.iterdir()) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        kill_tree(proc)
    return modules_of(tmp_path, proc.pid)


async def test_a_gateway_on_sqlite_serves_without_the_cli_or_sqlalchemy(
    tmp_path: Path, provider: FakeProvider
) -> None:
    loaded = await modules_of_a_serving_gateway(tmp_path, provider)
    assert {"rtgate.relay.pump", "rtgate.store.sql", "sqlite3", "structlog", "frozenlist"} <= loaded
    assert sorted(loaded & set(NOT_SERVING)) == []


@pytest.mark.postgres
async def test_a_gateway_on_postgresql_serves_on_asyncpg_alone(
    tmp_path: Path, provider: FakeProvider, db_url: str
) -> None:
    loaded = await modules_of_a_serving_gateway(tmp_path, provider, db_url)
    assert {"rtgate.relay.pump", "rtgate.store.sql", "asyncpg"} <= loaded
    assert sorted(loaded & set(NOT_SERVING) - {"asyncpg"}) == []


#: All of rtgate the parent of ``--workers N`` imports: the settings and what reads them, the
#: logs, and the workers' modules, the parent's and the link's words (``rtgate.server`` itself
#: runs as ``__main__``).
PARENT_OF_WORKERS = {
    "rtgate",
    "rtgate.interpreter",
    "rtgate.worker",
    "rtgate.workers",
    "rtgate.config",
    "rtgate.errors",
    "rtgate.listen",
    "rtgate.logs",
    "rtgate.tls",
    "rtgate.validation",
}


def closed_on_exec(pid: int, fd: int) -> bool:
    """Whether process ``pid``'s descriptor ``fd`` has O_CLOEXEC (Linux: /proc's fdinfo)."""
    info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    flags = info.split("flags:")[1].split()[0]
    return bool(int(flags, 8) & os.O_CLOEXEC)


def spawned_workers(parent: int) -> list[int]:
    """The pids of ``--workers N``'s workers."""
    return [p.pid for p in psutil.Process(parent).children() if "rtgate.worker" in p.cmdline()]


async def test_the_parent_of_workers_loads_only_what_it_needs_to_supervise_them(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """The parent of ``--workers N`` forwards signals and closes its workers together; the app,
    aiohttp and the relay are its workers' alone (~24 MB it held before, docs/performance.md
    9.16)."""
    port = free_port()
    env = provider.gateway_env(tmp_path / "home", port, RTGATE_WORKERS="2")
    list_modules_at_exit(env, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtgate", "serve"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        await wait_ready(port, proc)
        # Both serving, each past the point where it ignores SIGTERM until its drain.
        await readiness_settles(port, 200)
        workers = spawned_workers(proc.pid)
        # Its children are the workers alone: no multiprocessing resource tracker (~12 MB).
        children = psutil.Process(proc.pid).children()
        # Each worker's link is its own: closed on exec, so no child of the worker (the
        # engine's TTS) holds it open past the worker's end (/proc's fdinfo, O_CLOEXEC).
        for pid in workers:
            assert closed_on_exec(pid, int(psutil.Process(pid).cmdline()[-2]))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        kill_tree(proc)
    parent = modules_of(tmp_path, proc.pid)
    assert "rtgate.workers" in parent
    assert sorted(m for m in parent if m.startswith("rtgate")) == sorted(PARENT_OF_WORKERS)
    # Nor prometheus-client: the workers' metrics files are theirs (the parent only removes a
    # gone worker's live gauges, by name).
    serving_only = {"aiohttp", "picows", "uvloop", "yarl", "multiprocessing", "prometheus_client"}
    assert sorted(parent & serving_only) == []
    assert len(workers) == 2
    assert sorted(c.pid for c in children) == sorted(workers)
    for pid in workers:
        loaded = modules_of(tmp_path, pid)
        assert {"aiohttp", "rtgate.serving", "rtgate.api.app", "rtgate.relay.pump"} <= loaded
        assert sorted(loaded & set(NOT_SERVING)) == []


def serve_to_its_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``rtgate serve`` that fails to start, run to its exit (its stderr kept)."""
    return subprocess.run(
        [sys.executable, "-m", "rtgate", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def serve_with_no_database(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``rtgate serve`` with its database where nothing listens (port 1), to its exit."""
    env["RTGATE_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/test"
    return serve_to_its_exit(env)


def test_workers_that_cannot_start_say_why_in_a_line_and_the_parent_exits_2(
    tmp_path: Path,
) -> None:
    env = gateway_env(tmp_path / "home", free_port(), RTGATE_WORKERS="2")
    proc = serve_with_no_database(env)  # each worker's store fails to open as it starts
    assert proc.returncode == 2
    refused = "error: cannot open the database: ConnectionRefusedError"
    assert proc.stderr.count(f"{refused} (postgresql://127.0.0.1:1/test)") == 2
    # Each worker's one line says it all: the parent adds no line of its own per worker.
    assert "Traceback" not in proc.stderr and "exited with status" not in proc.stderr


#: The speech models' packages the local engine's stages load (when installed, as ``make dev``
#: installs them): silero's runtime, whisper's, piper's.
SPEECH_MODELS = {"onnxruntime", "faster_whisper", "ctranslate2", "piper"}


def modules_at_exit(where: Path) -> set[str]:
    """The one listing ``list_modules_at_exit`` had the server write (no workers here)."""
    (listing,) = where.glob("modules-*.txt")
    return set(listing.read_text().splitlines())


def local_engine_env(tmp_path: Path) -> dict[str, str]:
    """A gateway whose default upstream is the local engine, with its stages as detected."""
    env = gateway_env(tmp_path / "home", free_port(), OPENAI_API_KEY="")
    for name in list(env):
        if name == "RTGATE_DEFAULT_UPSTREAM" or name.startswith("RTGATE_ENGINE_"):
            del env[name]
    list_modules_at_exit(env, tmp_path)
    return env


def test_a_start_that_fails_on_the_database_loads_no_speech_model(tmp_path: Path) -> None:
    """The local engine (no provider key) loads its models once the store has opened: a
    database that cannot be opened is reported without seconds of model loading first."""
    proc = serve_with_no_database(local_engine_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "cannot open the database" in proc.stderr
    loaded = modules_at_exit(tmp_path)
    assert sorted(loaded & SPEECH_MODELS) == []
    assert "rtgate.engine.stack" in loaded  # the engine was built: its models were not loaded


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port another server listens on, sharing it (``SO_REUSEPORT``) as a gateway's
    workers do: a gateway that set it too would be let in beside it."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def busy(port: int) -> str:
    return (
        f"error: port: cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(another gateway or server is listening there)\n"
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_is_one_line_and_exit_2_before_anything_loads(
    tmp_path: Path, workers: str
) -> None:
    """Not a traceback after the engine's models have loaded; and ``--workers``, which sets
    ``SO_REUSEPORT``, does not join another server's port and split its connections."""
    env = local_engine_env(tmp_path)
    with taken_port() as port:
        env.update(RTGATE_HOST="127.0.0.1", RTGATE_PORT=str(port), RTGATE_WORKERS=workers)
        proc = serve_to_its_exit(env)
    assert (proc.returncode, proc.stderr) == (2, busy(port))
    loaded = modules_at_exit(tmp_path)
    assert "rtgate.serving" not in loaded and "rtgate.workers" not in loaded


def test_a_gateway_starting_on_a_claimed_port_is_told_before_it_binds(tmp_path: Path) -> None:
    """Two gateways started in the same instant both find the port free, and with ``--workers``
    (``SO_REUSEPORT``) would both serve it, splitting its connections: the one that claims the
    port second is told, here with the port not yet listened on at all."""
    claim = claim_port(free_port())
    assert claim is not None  # Linux: the suite's platform
    port = int(claim.getsockname()[len("\0rtgate-port-") :])
    with claim:
        with pytest.raises(ConfigError, match="another rtgate gateway on this machine"):
            claim_port(port)
        env = local_engine_env(tmp_path)
        env.update(RTGATE_HOST="127.0.0.1", RTGATE_PORT=str(port), RTGATE_WORKERS="2")
        proc = serve_to_its_exit(env)
        assert (proc.returncode, proc.stderr) == (
            2,
            f"error: port: cannot listen on port {port}: another rtgate gateway on this machine"
            " is starting or serving on it\n",
        )
    assert "rtgate.workers" not in modules_at_exit(tmp_path)
    # Released with its holder: the next gateway may claim the port.
    again = claim_port(port)
    assert again is not None
    again.close()


def test_the_port_check_binds_every_address_the_listener_will() -> None:
    """An empty host is every interface, as asyncio reads it; a name is resolved; a host this
    machine does not have is the host's fault, not the port's."""
    with taken_port() as port:
        check_port("127.0.0.1", free_port())
        check_port("", free_port())
        for host in ("", "0.0.0.0", "127.0.0.1"):
            with pytest.raises(ConfigError, match=r"^port: cannot listen on .*already in use"):
                check_port(host, port)
    with pytest.raises(ConfigError, match=r"^host: cannot listen on nonexistent\.invalid:"):
        check_port("nonexistent.invalid", free_port())
    with pytest.raises(ConfigError, match=r"^host: cannot listen on 192\.0\.2\.1:"):
        check_port("192.0.2.1", free_port())  # TEST-NET-1 (RFC 5737): no machine's address


async def test_a_port_taken_after_the_check_is_the_same_one_line(tmp_path: Path) -> None:
    """The bind itself (the port may be taken between the check and the bind): the same error,
    once the app it started has been cleaned up (the store closed, so the test's home can go)."""
    env = {"RTGATE_HOME": str(tmp_path), "RTGATE_HOST": "127.0.0.1", "OPENAI_API_KEY": "sk-t"}
    settings = load_settings(None, env)  # a provider upstream: no engine models to load
    with taken_port() as port:
        settings = msgspec.structs.replace(settings, port=port)
        before = asyncio.all_tasks()
        with pytest.raises(ConfigError) as refused:
            await serve_async(settings, "engine-token", announce=False)
    assert f"error: {refused.value.message}\n" == busy(port)
    # Cleaned up: the app's tasks (the ledger's writer, the heap trimmer, the revoked-key
    # watch) stopped with it.
    await asyncio.sleep(0)
    assert sorted(t.get_name() for t in asyncio.all_tasks() - before) == []


async def test_a_gateway_whose_default_is_the_local_engine_loads_its_models_before_serving(
    tmp_path: Path,
) -> None:
    """So the first session does not wait seconds for them."""
    env = local_engine_env(tmp_path)
    installed = {m for m in SPEECH_MODELS if importlib.util.find_spec(m) is not None}
    assert installed, "the dev install has the local engine's speech models"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtgate", "serve"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        await wait_ready(int(env["RTGATE_PORT"]), proc)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        kill_tree(proc)
    assert sorted(installed - modules_at_exit(tmp_path)) == []


def test_workers_sharing_redis_or_a_single_process_need_no_warning(tmp_path: Path) -> None:
    def settings(**env: str) -> Settings:
        return load_settings(None, {"RTGATE_HOME": str(tmp_path), **env})

    assert unshared_workers_warning(settings()) is None
    assert unshared_workers_warning(settings(RTGATE_WORKERS="3")) is not None
    shared = settings(RTGATE_WORKERS="3", RTGATE_REDIS_URL="redis://127.0.0.1:6379/0")
    assert unshared_workers_warning(shared) is None


ADMIN_TOKEN = "adm_" + "Pr0cess" * 5


def start_serving(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rtgate", "serve", "--workers", "2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


async def test_a_sigterm_while_the_workers_start_drains_them_once_they_serve(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """The parent's word reaches a worker still starting: it drains once it serves, and the
    gateway exits 0. (A word that came before the engine token's line once left a worker deaf
    to it and the gateway serving on.)"""
    env = provider.gateway_env(tmp_path / "home", free_port())
    proc = start_serving(env, tmp_path / "gateway.log")
    try:
        async with asyncio.timeout(30):
            while not spawned_workers(proc.pid):  # noqa: ASYNC110 -- another process's
                await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        kill_tree(proc)
    assert (tmp_path / "gateway.log").read_text().count("draining:") == 2


async def test_workers_whose_parent_is_killed_stop_listening_drain_and_exit(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """On their own, workers leave the port at once (a restarted gateway must get every new
    connection, not a third of them refused by a worker draining), drain their sessions, take
    their signals again (a SIGTERM now is a drain's second: the sessions end) and exit."""
    port = free_port()
    env = provider.gateway_env(tmp_path / "home", port)
    key = create_key(env, "o")
    proc = start_serving(env, tmp_path / "gateway.log")
    workers: list[psutil.Process] = []
    try:
        await wait_ready(port, proc)
        await readiness_settles(port, 200)
        workers = [psutil.Process(pid) for pid in spawned_workers(proc.pid)]
        assert len(workers) == 2
        (ws,) = await open_sessions(port, key, 1)
        proc.kill()
        proc.wait(5)
        # The port's claim went with the parent (the workers never held it): a gateway
        # restarted now may take the port while the orphans drain.
        claim = claim_port(port)
        assert claim is not None
        claim.close()
        # Nobody listens on the port any more; the session runs on, metered.
        async with asyncio.timeout(10):
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    break
                w.close()
                await asyncio.sleep(0.05)
        await metered(ws, "resp_orphan")
        for w in workers:  # the idle one may be gone already
            with contextlib.suppress(psutil.NoSuchProcess):
                w.send_signal(signal.SIGTERM)
        event = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert event["error"]["code"] == "server_shutting_down"
        _gone, alive = await asyncio.to_thread(psutil.wait_procs, workers, 20)
        assert alive == []
    finally:
        kill_tree(proc)
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()
    said = (tmp_path / "gateway.log").read_text()
    assert said.count("the parent of this worker is gone: no longer listening") == 2


async def test_a_worker_that_dies_has_the_others_drain_and_the_gateway_exit_1(
    tmp_path: Path, provider: FakeProvider
) -> None:
    port = free_port()
    env = provider.gateway_env(tmp_path / "home", port)
    key = create_key(env, "d")
    proc = start_serving(env, tmp_path / "gateway.log")
    try:
        await wait_ready(port, proc)
        await readiness_settles(port, 200)
        conns = await open_sessions(port, key, 4)
        dead = psutil.Process(spawned_workers(proc.pid)[0])
        dead.kill()
        # The other worker drains (its sessions, if the kernel gave it any, run on and end as
        # their clients close them; with none it is drained at once), then the gateway exits.
        for ws in conns:
            await ws.close()
        assert await asyncio.to_thread(proc.wait, 30) == 1
    finally:
        kill_tree(proc)
    said = (tmp_path / "gateway.log").read_text()
    assert "ended: draining the others" in said and "exited with status -9" in said
    assert said.count("draining:") == 1  # the survivor's


async def test_a_signal_to_the_whole_group_drains_once(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """A supervisor's SIGTERM reaches every process of the group: the workers leave it to the
    parent, whose word drains them (not a second signal each: the sessions run on); SIGUSR1
    after it drains again, which does not escalate."""
    port = free_port()
    env = provider.gateway_env(tmp_path / "home", port)
    key = create_key(env, "g")
    with (tmp_path / "gateway.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rtgate", "serve", "--workers", "2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
    try:
        await wait_ready(port, proc)
        await readiness_settles(port, 200)
        conns = await open_sessions(port, key, 4)
        os.killpg(proc.pid, signal.SIGTERM)
        await readiness_settles(port, 503)
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.5)
        for i, ws in enumerate(conns):
            await metered(ws, f"resp_{i}")  # still relayed, still metered
            await ws.close(1000, "done")
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        kill_tree(proc)
    rows = cli_json(env, "sessions", "--limit", "50")
    assert [(r["close_code"], r["closed_by"]) for r in rows] == [(1000, "client")] * 4


async def open_sessions(port: int, key: str, n: int) -> list[Any]:
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
    conns = [
        await connect(url, additional_headers={"Authorization": f"Bearer {key}"}) for _ in range(n)
    ]
    for ws in conns:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
    return conns


async def metered(ws: Any, rid: str, *, local: bool = False) -> None:
    """Usage sent through the gateway (the fake provider's, or a text turn the local engine
    answers); once the client sees it, it is in the ledger."""
    if local:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": rid}]}
        await ws.send(orjson.dumps({"type": "conversation.item.create", "item": item}).decode())
        await ws.send(orjson.dumps({"type": "response.create"}).decode())
    else:
        await ws.send(emit_response_done(rid, 1000))
    while (event := orjson.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "response.done":
        pass
    assert local or event["response"]["id"] == rid


async def refused_during_the_drain(port: int, key: str) -> None:
    """A new session and a client secret are refused with a reconnect error."""
    async with connect(
        f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        event = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert event["error"]["code"] == "server_shutting_down" and ws.close_code == 1001
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {key}"},
            json={},
        ) as r,
    ):
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "server_shutting_down"


@pytest.mark.parametrize("upstream", ["provider", "local-engine"])
async def test_sigterm_drains_every_worker_and_exits_when_the_last_session_ends(
    tmp_path: Path, provider: FakeProvider, upstream: str
) -> None:
    port = free_port()
    local = upstream == "local-engine"
    env = provider.gateway_env(
        tmp_path / "home",
        port,
        OPENAI_API_KEY="" if local else PROVIDER_KEY,
        RTGATE_DRAIN_SECONDS="120",
        # A text turn answered in text: no speech stack to load in each worker.
        RTGATE_ENGINE_STT="none",
        RTGATE_ENGINE_TTS="tone",
        RTGATE_ENGINE_VAD="energy",
    )
    key = create_key(env, "d")
    proc = start_serving(env, tmp_path / "gateway.log")
    try:
        await wait_ready(port, proc)
        await readiness_settles(port, 200)
        conns = await open_sessions(port, key, 8)
        proc.send_signal(signal.SIGTERM)
        await readiness_settles(port, 503)
        await refused_during_the_drain(port, key)
        for i, ws in enumerate(conns):
            await metered(ws, f"resp_{i}", local=local)
        for ws in conns[:-1]:
            await ws.close(1000, "done")
        # One session left: the gateway still serves (and still refuses new sessions).
        await readiness_settles(port, 503, in_a_row=3)
        assert proc.poll() is None
        await conns[-1].close(1000, "done")
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        kill_tree(proc)
    rows = cli_json(env, "sessions", "--limit", "50")
    assert [(r["close_code"], r["closed_by"]) for r in rows] == [(1000, "client")] * 8
    assert sum(r["records"] for r in cli_json(env, "usage")) == 8


@pytest.fixture
def link() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    """Links as the parent of ``--workers N`` makes them (a socket pair: its end, the worker's),
    each closed at the test's end."""
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        ours, theirs = socket.socketpair()
        made.extend((ours, theirs))
        return ours, theirs

    yield make
    for sock in made:
        sock.close()


async def test_no_worker_is_told_to_close_before_each_has_drained_or_exited(
    link: Callable[[], tuple[socket.socket, socket.socket]],
) -> None:
    pairs = [link() for _ in range(3)]
    parent = Workers([ours for ours, _ in pairs])
    serving = asyncio.ensure_future(asyncio.to_thread(parent.serve))
    children = [ParentLink(theirs) for _, theirs in pairs]
    drained: list[int] = []
    for i, child in enumerate(children):
        child.watch(drain=lambda i=i: drained.append(i), stop=lambda: None, orphaned=lambda: None)
    # The admin API asked one worker: the parent has every worker drain.
    children[0].ask_drain()
    await until(lambda: sorted(drained) == [0, 1, 2])
    # Two workers drain; the third has not yet: nobody is told to close.
    waits = [asyncio.ensure_future(child.wait()) for child in children[:2]]
    done, _ = await asyncio.wait(waits, timeout=0.3)
    assert not done and not parent.closed
    # The third exits (its end of the link closes): every worker is told.
    children[2].unwatch()
    pairs[2][1].close()
    await asyncio.wait_for(asyncio.gather(*waits), 5)
    assert parent.closed
    # The parent reads on until every worker has exited.
    assert not serving.done()
    for child, (_, theirs) in zip(children[:2], pairs[:2], strict=True):
        child.unwatch()
        theirs.close()
    await asyncio.wait_for(serving, 5)


async def test_a_worker_reads_its_orders_those_sent_while_it_started_first(
    link: Callable[[], tuple[socket.socket, socket.socket]],
) -> None:
    """A worker still starting when the parent turns a signal into a word reads it once it
    serves, even in the same read as the engine token; a drain's word is not the close's; a
    parent that is gone reads as a drain and a close."""
    ours, theirs = link()
    ours.sendall(b"token-1 fp\n" + DRAIN)
    child = ParentLink(theirs)
    assert child.first_line() == ("token-1", "fp")
    heard: list[str] = []

    def words(child: ParentLink) -> None:
        child.watch(
            drain=lambda: heard.append("drain"),
            stop=lambda: heard.append("stop"),
            orphaned=lambda: heard.append("orphaned"),
        )

    words(child)
    assert heard == ["drain"]
    ours.send(STOP)
    await until(lambda: heard == ["drain", "stop"])
    waiting = asyncio.ensure_future(child.wait())
    ours.send(DRAIN)  # a SIGUSR1 after the SIGTERM: not the close either
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert ours.recv(64) == DRAINED
    ours.send(CLOSE)
    await asyncio.wait_for(waiting, 5)
    child.unwatch()
    # The parent exits, the worker serving: it is on its own, and its wait for the close is
    # over.
    ours, theirs = link()
    ours.sendall(b"token-2 fp\n")
    child = ParentLink(theirs)
    assert child.first_line() == ("token-2", "fp")
    heard.clear()
    words(child)
    ours.close()
    await until(lambda: heard == ["orphaned"])
    await asyncio.wait_for(child.wait(), 5)


def test_a_worker_refuses_settings_that_are_not_its_parents(
    tmp_path: Path, link: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    """Each worker reads the settings itself: read after the file or the environment changed,
    they would not be the ones the parent started with, and the worker says so instead of
    serving on another port, say."""
    ours, theirs = link()
    parents = fingerprint(load_settings(None, {"RTGATE_PORT": "18001"}))
    ours.sendall(f"token {parents}\n".encode())
    env = gateway_env(tmp_path / "home", 18002)  # not the parent's port
    proc = subprocess.run(
        [sys.executable, "-m", "rtgate.worker", "rtgate", str(theirs.fileno()), "0"],
        env=env,
        pass_fds=(theirs.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "error: the settings changed while the workers started" in proc.stderr
    assert fingerprint(load_settings(None, {"RTGATE_PORT": "18001"})) == parents


def test_the_parent_turns_its_signals_into_words(
    link: Callable[[], tuple[socket.socket, socket.socket]],
) -> None:
    """SIGTERM drains, a second one stops, and a third kills (no word: a worker still starting
    reads none); SIGINT stops; SIGUSR1 drains and never escalates; a worker that exited is passed
    over."""
    pairs = [link() for _ in range(2)]
    gone_ours, gone_theirs = link()
    gone_theirs.close()
    for _, theirs in pairs:
        theirs.settimeout(5)  # a word not said fails the test, not hangs it

    def said() -> list[bytes]:
        return [theirs.recv(64) for _, theirs in pairs]

    def silent() -> bool:
        for _, theirs in pairs:
            theirs.setblocking(False)
            with pytest.raises(BlockingIOError):
                theirs.recv(64)
            theirs.settimeout(5)
        return True

    parent = Workers([ours for ours, _ in pairs] + [gone_ours])
    parent.on_signal(signal.SIGUSR1, None)
    parent.on_signal(signal.SIGUSR1, None)
    assert said() == [DRAIN, DRAIN] and silent()  # once: a drain under way is left as it is
    parent.on_signal(signal.SIGTERM, None)
    assert said() == [STOP, STOP]
    parent.on_signal(signal.SIGUSR1, None)
    parent.on_signal(signal.SIGTERM, None)  # the third: the workers are killed, no word
    assert silent()
    Workers([ours for ours, _ in pairs]).on_signal(signal.SIGINT, None)
    assert said() == [STOP, STOP]
    Workers([ours for ours, _ in pairs]).on_signal(signal.SIGTERM, None)
    assert said() == [DRAIN, DRAIN]


async def knock(port: int, key: str, upgrade: bool) -> str:
    """One fresh connection's answer: for ``/readyz`` its status and the answering worker's live
    sessions (``"503 1"``); for a session's upgrade ``"session.created"``, or the close code and
    the error it heard (``"1001 server_shutting_down"``); else the error that ended it without
    an answer (a reset, an end of stream)."""
    try:
        if not upgrade:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            if not answer:
                return "end of stream"
            status, body = answer.split(b" ", 2)[1], answer.split(b"\r\n\r\n", 1)[1]
            return f"{status.decode()} {orjson.loads(body)['live_sessions']}"
        async with connect(
            f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {key}"},
            open_timeout=10,
        ) as ws:
            event = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if event["type"] == "session.created":
                return "session.created"
            with pytest.raises(websockets.ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 10)
        return f"{ws.close_code} {event['error']['code']}"
    except (OSError, EOFError, websockets.WebSocketException, TimeoutError) as e:
        return repr(e)


async def test_no_connection_is_reset_while_a_sibling_worker_still_holds_a_session(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """A worker with nothing left to drain keeps its listener, answering the drain's refusal,
    until every worker has drained: with ``SO_REUSEPORT`` each worker's listener has an accept
    queue of its own, and closing it resets the connections the kernel queued there."""
    port = free_port()
    env = provider.gateway_env(
        tmp_path / "home",
        port,
        RTGATE_DRAIN_SECONDS="120",
    )
    key = create_key(env, "d")
    log = tmp_path / "gateway.log"
    proc = start_serving(env, log)
    try:
        await wait_ready(port, proc)
        await readiness_settles(port, 200)
        # One session: one worker holds it, the other holds none and drains at once.
        (held,) = await open_sessions(port, key, 1)
        answers: list[str] = []
        clean = {"200 0", "200 1", "session.created", "503 0", "503 1", "1001 server_shutting_down"}
        hammering, signalled = True, False

        async def hammer(n: int) -> None:
            while hammering:
                n += 1
                # Sessions only once the drain is asked for: before it, one would hold the
                # idle worker too.
                answers.append(await knock(port, key, upgrade=signalled and n % 8 == 0))
                if answers[-1] not in clean:
                    return  # the test has failed; a refused connect would not even yield
                await asyncio.sleep(0)

        async with asyncio.TaskGroup() as tg:
            try:
                for n in range(24):
                    tg.create_task(hammer(n))
                # Both workers serve: one answers with the held session, the other with none.
                await until(lambda: {"200 0", "200 1"} <= set(answers), seconds=30)
                proc.send_signal(signal.SIGTERM)
                signalled = True
                # The idle worker has drained (its sibling still holds the session): before the
                # fix it closed its listener and exited within a few milliseconds.
                drained = b"drained: no live session is left"
                await until(lambda: drained in log.read_bytes(), seconds=30)
                await asyncio.sleep(1.0)
                late = len(answers)
                await asyncio.sleep(1.0)
            finally:
                hammering = False
        # Serving (200, a session), then refused cleanly (503, 1001): never anything else.
        assert not [a for a in answers if a not in clean], sorted(set(answers))
        assert "1001 server_shutting_down" in answers
        # Both workers still answer (the idle one 0 live sessions, the other 1).
        assert {"503 0", "503 1"} <= set(answers[late:]), sorted(set(answers[late:]))
        assert proc.poll() is None
        await metered(held, "resp_held")
        await held.close(1000, "done")
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        kill_tree(proc)
    rows = cli_json(env, "sessions", "--limit", "1000")
    assert {(r["close_code"], r["closed_by"]) for r in rows} == {(1000, "client")}
    assert sum(r["records"] for r in cli_json(env, "usage")) == 1


async def test_an_admin_drain_ends_what_is_left_at_the_deadline_with_1001(
    tmp_path: Path, provider: FakeProvider
) -> None:
    port = free_port()
    env = provider.gateway_env(
        tmp_path / "home",
        port,
        RTGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        RTGATE_DRAIN_SECONDS="3",
    )
    key = create_key(env, "d")
    proc = start_serving(env, tmp_path / "gateway.log")
    try:
        await wait_ready(port, proc)
        conns = await open_sessions(port, key, 6)
        asked = time.monotonic()
        # One worker answers; it has the parent tell every worker to drain.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{port}/admin/v1/drain",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as r,
        ):
            assert r.status == 202
            assert (await r.json())["drain_seconds"] == 3
        await readiness_settles(port, 503)
        await refused_during_the_drain(port, key)
        for i, ws in enumerate(conns):
            await metered(ws, f"resp_{i}")
        for ws in conns:
            event = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert event["error"]["code"] == "server_shutting_down"
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert (ws.close_code, ws.close_reason) == (1001, "server_error.server_shutting_down")
            assert time.monotonic() - asked >= 3.0
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        kill_tree(proc)
    rows = cli_json(env, "sessions", "--limit", "50")
    assert [(r["close_code"], r["closed_by"]) for r in rows] == [(1001, "gateway")] * 6
    assert sum(r["records"] for r in cli_json(env, "usage")) == 6


def test_a_provider_upstream_with_no_key_is_a_warning_at_start(tmp_path: Path) -> None:
    """A newcomer's find: a Gemini upstream with no GEMINI_API_KEY was dialled with no key,
    every session refused by the provider, and nothing said at start-up."""
    from rtgate.server import missing_key_warnings

    cfg = tmp_path / "g.toml"
    cfg.write_text('[upstreams.g]\nkind = "gemini"\n\n[models.gemini-live]\nupstream = "g"\n')
    env = {"RTGATE_HOME": str(tmp_path), "OPENAI_API_KEY": "sk-x"}
    assert missing_key_warnings(load_settings(cfg, env)) == [
        "upstream g (gemini) has no key: set GEMINI_API_KEY (its models: gemini-live)"
    ]
    assert missing_key_warnings(load_settings(cfg, {**env, "GEMINI_API_KEY": "AIza-x"})) == []
    # Without OpenAI's key its models go to the local engine (the summary says so).
    assert missing_key_warnings(load_settings(None, {"RTGATE_HOME": str(tmp_path)})) == []
    # Azure always takes a key, named or not; an OpenAI-kind upstream with no variable may be
    # a server that asks none.
    cfg.write_text(
        '[upstreams.az]\nkind = "azure"\nbase_url = "wss://r.example/openai/v1"\n'
        '[upstreams.lab]\nbase_url = "ws://10.0.0.1/v1"\n'
        '[models.m1]\nupstream = "az"\n[models.m2]\nupstream = "lab"\n'
    )
    assert missing_key_warnings(load_settings(cfg, env)) == [
        "upstream az (azure) has no key: set api_key_env to the variable that holds it"
        " (its models: m1)"
    ]


def test_a_gone_workers_live_gauges_stop_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review's find: a worker killed with sessions open went on counting them in every
    scrape's rtgate_live_sessions (prometheus-client keeps a process's files until told it is
    dead), through the others' drain. Its counters stay: totals do not forget."""
    from types import SimpleNamespace

    from rtgate.worker import METRICS_DIR
    from rtgate.workers import Workers

    for name in ("gauge_livesum_4242.db", "gauge_livemax_4242.db", "counter_4242.db"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "gauge_livesum_7.db").write_bytes(b"x")  # a sibling's, still running
    monkeypatch.setenv(METRICS_DIR, str(tmp_path))
    ours, theirs = socket.socketpair()
    workers = Workers([ours])
    workers.procs.append(SimpleNamespace(pid=4242))  # type: ignore[arg-type]
    theirs.close()  # the worker's end: gone
    workers.serve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db", "gauge_livesum_7.db"]
    ours.close()


def test_a_killed_parents_metrics_directory_is_removed_at_the_next_start(tmp_path: Path) -> None:
    """A newcomer's find: after a SIGKILL of the --workers parent, its metrics directory stayed
    in the home, one more for every such run. The next start removes those whose parent's lock
    is free; a running gateway's (another on this home, in another container too) stays, and
    so does a directory from before the lock."""
    gone, alive, old = (tmp_path / f"metrics-{n}" for n in ("gone1234", "alive567", "old89ab"))
    for run in (gone, alive, old):
        run.mkdir()
        (run / "counter_1.db").write_bytes(b"x")
    (gone / ALIVE).touch()  # its parent died holding the lock: the kernel let it go
    with held_while_alive(alive):
        forget_dead_runs(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, old.name]
    forget_dead_runs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]


async def test_a_killed_gateways_open_session_ends_as_lost_once_another_has_beaten(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """A gateway killed with a session open never writes its end; the next one on the same
    database ends it as lost once the dead one has been silent for four beats, instead of
    listing it live forever (rtgate.lost_sessions)."""
    port = free_port()
    env = provider.gateway_env(tmp_path / "home", port, RTGATE_INSTANCE_BEAT_SECONDS="0.2")
    key = create_key(env, "k")
    first = subprocess.Popen([sys.executable, "-m", "rtgate", "serve"], env=env)
    try:
        await wait_ready(port, first)
        (ws,) = await open_sessions(port, key, 1)
        await metered(ws, "resp_before_the_kill")
        first.kill()
        first.wait(5)
        await ws.close()
    finally:
        kill_tree(first)
    (row,) = cli_json(env, "sessions")
    assert row["ended_at"] is None  # live, as far as the database knows
    second = subprocess.Popen([sys.executable, "-m", "rtgate", "serve"], env=env)
    try:
        await wait_ready(port, second)
        rows: list[dict[str, Any]] = []

        def ended() -> bool:
            rows[:] = cli_json(env, "sessions")
            return rows[0]["ended_at"] is not None

        await until(ended, 30, every=0.2)
        (row,) = rows
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert (row["close_code"], row["close_reason"], row["closed_by"]) == (
        1006,
        "gateway_instance_lost",
        "gateway",
    )
    # Its end: the last moment it is known to have been relayed (its usage, a beat after).
    assert row["duration_s"] > 0 and sum(row["tokens"].values()) > 0
