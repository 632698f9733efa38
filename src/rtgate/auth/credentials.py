"""Where a client's credential comes from on the WebSocket upgrade (docs/protocol.md 1.7, 3.3).

Order: ``Authorization: Bearer``, then Azure-style ``api-key``, then the browser subprotocol
``openai-insecure-api-key.<key>``. The subprotocol that carries the key is never echoed back;
the server selects ``realtime``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

INSECURE_KEY_PROTOCOL = "openai-insecure-api-key."
BETA_PROTOCOL = "openai-beta.realtime-v1"


@dataclass(frozen=True, slots=True)
class ClientCredential:
    secret: str | None
    beta: bool


def offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    raw = headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def client_credential(headers: Mapping[str, str]) -> ClientCredential:
    protocols = offered_subprotocols(headers)
    secret: str | None = None
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        secret = value.strip()
    if secret is None and headers.get("api-key", "").strip():
        secret = headers["api-key"].strip()
    if secret is None:
        for p in protocols:
            if p.startswith(INSECURE_KEY_PROTOCOL) and len(p) > len(INSECURE_KEY_PROTOCOL):
                secret = p[len(INSECURE_KEY_PROTOCOL) :]
                break
    beta = "realtime=v1" in headers.get("OpenAI-Beta", "") or BETA_PROTOCOL in protocols
    return ClientCredential(secret=secret, beta=beta)
