"""How to dial an upstream: its URL and the headers that replace the client's
(docs/protocol.md 8.2).

Pure functions; the endpoint and the call sidebands dial.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

from rtgate.config import GEMINI_LIVE_URL, UpstreamSettings

#: The client headers an upstream gets: what identifies the client library, as OpenAI's own SDKs
#: send it (``User-Agent``, the ``X-Stainless-*`` family). Nothing else a client sends is
#: forwarded: not its credentials, cookies or origin, not hop-by-hop or handshake headers (the
#: upstream leg negotiates its own), not its beta opt-in, organization or project, and no header
#: of its own invention, which would reach the provider under the provider's key.
_FORWARDED = "user-agent"
_FORWARDED_PREFIX = "x-stainless-"


#: On a dial of rtgate's own engine: how many of the first frames are the gateway's setup
#: ``session.update``, to apply before ``session.created`` (engine/server.py). Headers of the
#: ``Rtgate-`` family are the gateway's own: a client's are never forwarded.
SETUP_FRAMES_HEADER = "Rtgate-Setup-Frames"
_OWN_PREFIX = "rtgate-"


def ws_scheme(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


def upstream_url(
    base_url: str,
    *,
    model: str = "",
    intent: str | None = None,
    call_id: str | None = None,
    route: str = "realtime",
) -> str:
    """``{base}/realtime`` with the query the protocol defines (docs/protocol.md 0, fact 2), and
    nothing else: ``model`` (the upstream's id of the routed model), ``intent``, ``call_id`` (the
    caller has checked it). A client's own parameters (the SDKs' ``extra_query``) are never
    forwarded: they would reach the provider under the provider's key. Azure's GA endpoint
    (``/openai/v1``) takes the same query, the deployment as ``model``, and no ``api-version``.
    ``route``: ``realtime``, or ``realtime/translations`` (docs/protocol.md 10; Azure has it under
    the same base)."""
    params = [(k, v) for k, v in (("model", model), ("intent", intent), ("call_id", call_id)) if v]
    qs = urlencode(params)
    return f"{ws_scheme(base_url)}/{route}" + (f"?{qs}" if qs else "")


def gemini_url(base_url: str) -> str:
    """A ``gemini`` upstream's endpoint: ``base_url`` as it is when it names a path (the full
    ``BidiGenerateContent`` URL, or Vertex's), else that host with Google's Live path
    (docs/protocol-gemini.md 1). The model goes in ``setup``, never in the URL; the key in a
    header."""
    url = ws_scheme(base_url)
    if urlsplit(url).path.strip("/"):
        return url
    return url.rstrip("/") + urlsplit(GEMINI_LIVE_URL).path


def provider_key(up: UpstreamSettings) -> str | None:
    """The provider's key for ``up``: sent upstream in its headers, and never forwarded to a
    client (``RelayCore``'s ``secret``)."""
    return up.api_key.get_secret_value() if up.api_key else None


def upstream_headers(
    up: UpstreamSettings, client_headers: Mapping[str, str], api_key: str | None
) -> dict[str, str]:
    if up.kind == "gemini":
        # Google's own protocol: nothing of the OpenAI client's (its SDK's headers included)
        # belongs there; the key goes as the Python SDK sends it (docs/protocol-gemini.md 1).
        return {"x-goog-api-key": api_key} if api_key else {}
    headers = {
        k: v
        for k, v in client_headers.items()
        if (low := k.lower()) == _FORWARDED or low.startswith(_FORWARDED_PREFIX)
    }
    if api_key:
        if up.kind == "azure":
            headers["api-key"] = api_key
        else:
            headers["Authorization"] = f"Bearer {api_key}"
    if up.organization:
        headers["OpenAI-Organization"] = up.organization
    if up.project:
        headers["OpenAI-Project"] = up.project
    if up.beta:
        headers["OpenAI-Beta"] = "realtime=v1"
    return headers
