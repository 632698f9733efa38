"""What a gateway that relays to a provider keeps in memory: only what relaying needs.

Each module kept out here costs resident memory in every process (``docs/performance.md`` 9,
the fixed footprint): the engine's numpy and soxr, Jinja2 (the console's first page), the Redis
client (``redis_url`` only) and asyncpg (PostgreSQL only) are imported when first used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson

LAZY = ("numpy", "soxr", "jinja2", "redis", "asyncpg", "rtgate.engine.server")


def test_a_provider_gateway_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, orjson
        from rtgate.config import load_settings
        from rtgate.api.app import create_app
        import rtgate.cli
        settings = load_settings()
        assert settings.default_upstream == "openai", settings.default_upstream
        create_app(settings)
        print(orjson.dumps([m for m in {LAZY!r} if m in sys.modules]).decode())
        """
    )
    env = {
        **os.environ,
        "RTGATE_HOME": str(tmp_path),
        "OPENAI_API_KEY": "sk-test-provider-key-0123456789",
    }
    for var in ("RTGATE_CONFIG", "RTGATE_DATABASE_URL", "RTGATE_REDIS_URL"):
        env.pop(var, None)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert orjson.loads(out.stdout.strip().splitlines()[-1]) == []
