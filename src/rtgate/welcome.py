"""What a person meets first: the lines ``rtgate serve`` ends its start-up with, and ``GET /``.

Both say the same things from the same settings: where the gateway listens, which upstream
answers which model, how to get a key. The terminal lines name the upstreams' URLs (the operator
started the process); the page, which anyone who can reach the port may open, names only their
kind, as ``/v1/models`` already does.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rtgate import __version__
from rtgate.catalog import Catalog, served_somewhere
from rtgate.config import Settings

_KINDS = {
    "local": "the embedded local engine (offline)",
    "openai": "OpenAI",
    "azure": "Azure OpenAI",
}


@dataclass(frozen=True, slots=True)
class Served:
    """The catalog models one upstream answers."""

    upstream: str
    kind: str
    base_url: str
    models: tuple[str, ...]

    @property
    def label(self) -> str:
        return _KINDS.get(self.kind, self.kind)


def unserved(settings: Settings) -> list[str]:
    """Catalog models whose upstream refuses the one route they are for
    (``catalog.served_somewhere``): the translation model on the local engine (which does not
    translate), there by default when no provider key is set."""
    catalog = Catalog(settings)
    return [name for name in settings.models if not served_somewhere(catalog.resolve(name))]


def served_models(settings: Settings) -> list[Served]:
    """Catalog models grouped by upstream, the default upstream first; not those ``unserved``."""
    by_upstream: dict[str, list[str]] = {}
    refused = unserved(settings)
    for name, model in sorted(settings.models.items()):
        if name not in refused:
            by_upstream.setdefault(model.upstream, []).append(name)
    order = sorted(by_upstream, key=lambda n: (n != settings.default_upstream, n))
    out = []
    for name in order:
        up = settings.upstreams[name]
        base = "(this process)" if up.kind == "local" else up.base_url
        out.append(Served(name, up.kind, base, tuple(by_upstream[name])))
    return out


def summary_lines(
    settings: Settings,
    base_url: str,
    program: str = "rtgate",
    config: str | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The few lines that end start-up, for a person at the terminal. ``config``: the file
    the gateway read, which the key's command must read too, or its key lands in another
    home's database and is refused (a newcomer's find); ``env``: the gateway's environment,
    whose ``RTGATE_HOME`` or ``RTGATE_DATABASE_URL`` the command needs as much (a second
    newcomer's find)."""
    ws = base_url.replace("http", "ws", 1)
    lines = [
        f"rtgate {__version__} is ready at {base_url} (open it in a browser for a quick start)",
        f"  realtime   {ws}/v1/realtime?model={settings.default_model}",
        f"  live       {ws}/v1/live/sessions (GPT-Live: the model in session.start)",
    ]
    for served in served_models(settings):
        where = served.label if served.kind == "local" else f"{served.label} {served.base_url}"
        lines.append(f"  models     {', '.join(served.models)} -> {where}")
    if settings.default_upstream == "local":
        lines.append("             (no OPENAI_API_KEY: set it to relay to OpenAI instead)")
    for name in unserved(settings):
        lines.append(f"             ({name} needs a provider: the local engine does not translate)")
    # The file as a shell takes it from any directory: the command may run from another.
    command = (
        f"{program} --config {shlex.quote(str(Path(config).resolve()))}" if config else program
    )
    env = env or {}
    if env.get("RTGATE_HOME"):
        command = f"RTGATE_HOME={shlex.quote(str(settings.home.resolve()))} {command}"
    said = "   (the secret is shown once)"
    if env.get("RTGATE_DATABASE_URL"):
        # Its value may hold a password: named, not shown.
        said = "   (with this RTGATE_DATABASE_URL; the secret is shown once)"
    lines.append(f"  a key      {command} keys create --name me{said}")
    if settings.admin_token is None:
        lines.append("  admin API  off: set RTGATE_ADMIN_TOKEN to turn it on (and the console)")
    else:
        # Not "Bearer <name>": the log redactor cuts whatever follows that word.
        lines.append(f"  admin API  {base_url}/admin/v1/ (authorised by RTGATE_ADMIN_TOKEN)")
        lines.append(f"  console    {base_url}/ui/ (sign in with RTGATE_ADMIN_TOKEN)")
    lines.append(f"  playground {base_url}/ui/playground (talk with a gateway key)")
    lines.append(
        "  stop       Ctrl-C (live sessions are closed with 1001); SIGTERM drains them first"
    )
    return lines
