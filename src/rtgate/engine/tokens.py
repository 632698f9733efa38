"""Text token counts with OpenAI's own ``o200k_base`` encoding (the GPT-4o / realtime family).

The encoding ships inside the ``bpe-openai`` package (no download); without it the count falls
back to OpenAI's rule of thumb of four characters a token, so usage stays plausible.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable


@functools.cache
def _encoder() -> Callable[[str], list[int]] | None:
    with warnings.catch_warnings():
        # bpe-openai 0.1.4 reads its data with a deprecated importlib.resources call.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import bpe_openai
        except ImportError:
            return None
        enc = bpe_openai.get_encoding("o200k_base")
    encode: Callable[[str], list[int]] = enc.encode
    return encode


def count_tokens(text: str) -> int:
    if not text:
        return 0
    encode = _encoder()
    if encode is None:
        return (len(text) + 3) // 4
    return len(encode(text))
