from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rtgate.auth.credentials import client_credential
from rtgate.auth.keys import generate_key, hash_key, hashes_match, redact
from rtgate.config import GEMINI_LIVE_URL, UpstreamSettings
from rtgate.errors import AuthError
from rtgate.relay.upstream import gemini_url, upstream_headers, upstream_url


def test_keys_are_random_prefixed_and_hashed() -> None:
    a, b = generate_key(), generate_key()
    assert a.secret != b.secret and a.secret.startswith("rtg_")
    assert a.secret.startswith(a.display_prefix) and len(a.display_prefix) == 12
    assert a.key_hash == hash_key(a.secret) and a.secret not in a.key_hash
    assert hashes_match(a.key_hash, hash_key(a.secret))
    assert not hashes_match(a.key_hash, b.key_hash)
    assert redact(a.secret) == a.secret[:8] + "…"


def test_credential_sources_in_order() -> None:
    assert client_credential({"Authorization": "Bearer k1", "api-key": "k2"}).secret == "k1"
    assert client_credential({"api-key": "k2"}).secret == "k2"
    sub = client_credential({"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.k3"})
    assert sub.secret == "k3" and not sub.beta
    assert client_credential({"Sec-WebSocket-Protocol": "realtime"}).secret is None
    assert client_credential({"OpenAI-Beta": "realtime=v1"}).beta
    assert client_credential({"Sec-WebSocket-Protocol": "realtime, openai-beta.realtime-v1"}).beta


def test_upstream_headers_swap_credentials_and_forward_only_the_clients_identity() -> None:
    client = {
        "Authorization": "Bearer rtg_client",
        "api-key": "x",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": "abc",
        "Sec-WebSocket-Protocol": "p",
        "Sec-WebSocket-Extensions": "permessage-deflate",
        "Host": "gw",
        "Cookie": "c=1",
        "OpenAI-Beta": "realtime=v1",
        "User-Agent": "AsyncOpenAI/Python 3.57.0",
        "X-Stainless-Lang": "python",
        "OpenAI-Project": "client-proj",
        "X-Tenant-Secret": "t1",
        "Traceparent": "00-abc-def-01",
        "Origin": "https://app.example",
    }
    up = UpstreamSettings(organization="org-1", project="proj-1")
    h = upstream_headers(up, client, "sk-provider")
    assert h == {
        "User-Agent": "AsyncOpenAI/Python 3.57.0",
        "X-Stainless-Lang": "python",
        "Authorization": "Bearer sk-provider",
        "OpenAI-Organization": "org-1",
        "OpenAI-Project": "proj-1",
    }
    beta = upstream_headers(UpstreamSettings(beta=True), client, "sk")
    assert beta["OpenAI-Beta"] == "realtime=v1"
    azure = upstream_headers(UpstreamSettings(kind="azure"), client, "az-key")
    assert azure["api-key"] == "az-key" and "Authorization" not in azure
    # Google's protocol: its key header alone, nothing of the OpenAI client's.
    gemini = upstream_headers(UpstreamSettings(kind="gemini"), client, "AIza-key")
    assert gemini == {"x-goog-api-key": "AIza-key"}


def test_a_gemini_url_is_the_full_endpoint_or_a_host_given_googles_path() -> None:
    assert gemini_url("ws://127.0.0.1:9") == "ws://127.0.0.1:9" + urlsplit(GEMINI_LIVE_URL).path
    assert gemini_url("https://proxy.example/") == (
        "wss://proxy.example" + urlsplit(GEMINI_LIVE_URL).path
    )
    assert gemini_url(GEMINI_LIVE_URL) == GEMINI_LIVE_URL
    vertex = "wss://us-central1-aiplatform.googleapis.com/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"
    assert gemini_url(vertex) == vertex


def test_upstream_url_carries_only_the_protocols_query() -> None:
    url = upstream_url(
        "https://api.example/v1", model="gpt-realtime-2025-08-28", intent="transcription"
    )
    assert url == "wss://api.example/v1/realtime?model=gpt-realtime-2025-08-28&intent=transcription"
    assert upstream_url("ws://h/v1", intent="transcription") == (
        "ws://h/v1/realtime?intent=transcription"
    )
    assert upstream_url("ws://h/v1", call_id="rtc_1") == "ws://h/v1/realtime?call_id=rtc_1"
    assert upstream_url("wss://res.openai.azure.com/openai/v1", model="my-deployment") == (
        "wss://res.openai.azure.com/openai/v1/realtime?model=my-deployment"
    )


def test_a_wrong_key_is_quoted_as_far_as_a_log_may_show_it() -> None:
    """A newcomer's find: a short wrong key read "Incorrect API key provided: …."."""
    from rtgate.auth.keyring import incorrect_key

    assert incorrect_key("rtg_bad").message == "Incorrect API key provided."
    long = incorrect_key("rtg_0123456789abcdef").message
    assert long == "Incorrect API key provided: rtg_0123…"  # not "…." (a second newcomer's find)


async def test_a_client_secret_where_a_gateway_key_is_needed_is_told_so(tmp_path: Path) -> None:
    """A newcomer's find: a valid ek_ secret on /v1/models was told it was an incorrect key."""
    from rtgate.auth.client_secrets import new_secret
    from rtgate.auth.keyring import KeyRing
    from rtgate.clock import ManualClock
    from rtgate.store.sql import SqlStore

    store = SqlStore(f"sqlite:///{tmp_path / 'k.db'}")
    await store.init()
    try:
        with pytest.raises(AuthError, match=r"^Client secrets \(ek_...\) open Realtime sessions"):
            await KeyRing(store, ManualClock()).authenticate(new_secret())
    finally:
        await store.close()
