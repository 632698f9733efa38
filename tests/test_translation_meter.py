"""A translation session's input audio, counted by the gateway: the base64 arithmetic, the
recognised spellings of ``session.input_audio_buffer.append``, and the relay core's chunks,
budget checks and final record, fed plain strings (docs/protocol.md 10)."""

from __future__ import annotations

import base64
import json

import orjson
import pytest

from rtgate.catalog import Catalog
from rtgate.config import load_settings
from rtgate.errors import QuotaExceeded
from rtgate.protocol.actions import (
    CheckBudget,
    CloseClient,
    Ended,
    Record,
    Refused,
    SendClient,
    SendUpstream,
)
from rtgate.protocol.client_frames import DuplicateMember, UnreadableEvent
from rtgate.protocol.relay import RelayCore
from rtgate.protocol.relay_session import RelaySession
from rtgate.protocol.translation import (
    AudioMeter,
    appended_bytes,
    decoded_length,
    delivered_bytes,
)


def append(pcm: bytes, *, spaced: bool = False) -> str:
    event = {"type": "session.input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    return json.dumps(event) if spaced else orjson.dumps(event).decode()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 47, 48, 9600, 9601, 9602])
def test_the_decoded_length_is_read_from_the_base64_text_without_decoding(n: int) -> None:
    assert decoded_length(base64.b64encode(b"\x01" * n).decode()) == n


def test_appends_are_counted_in_every_spelling_and_nothing_else_is() -> None:
    pcm = b"\x00\x01" * 4800  # 200 ms
    assert appended_bytes(append(pcm)) == 9600
    assert appended_bytes(append(pcm, spaced=True)) == 9600
    reordered = orjson.dumps(
        {"event_id": "e1", "audio": base64.b64encode(pcm).decode(), "type": APPEND}
    ).decode()
    assert appended_bytes(reordered) == 9600
    # A JSON encoder may escape "/" (PHP does): the member is parsed then.
    escaped = orjson.dumps({"type": APPEND, "audio": "//8="}).decode().replace("/", "\\/")
    assert appended_bytes(escaped) == 2
    assert appended_bytes('{"type":"session.update","session":{}}') is None
    # The name escaped, or the audio repeated: the provider's parser reads the real one.
    hidden = orjson.dumps({"type": APPEND, "audio": "AAAA"}).decode().replace("_", "\\u005f")
    assert appended_bytes(hidden) == 3
    # A name repeated: which value a parser keeps is its choice, so the frame is refused (the
    # relay core answers it with an error and drops it: nothing reaches the provider).
    for twice in (
        '{"type":"session.input_audio_buffer.append","audio":"AAAA","audio":"AAAAAAAA"}',
        '{"type":"session.input_audio_buffer.append","audio":"AAAA","type":"session.update"}',
        '{"type":"input_audio_buffer.append","type":"session.input_audio_buffer.append","audio":"A"}',
    ):
        with pytest.raises(DuplicateMember):
            appended_bytes(twice)
    # What no parser of the gateway's reads is refused, not forwarded uncounted.
    for unread in ("not json", '["session.input_audio_buffer.append"]'):
        with pytest.raises(UnreadableEvent):
            appended_bytes(unread)
    surrogate = '{"event_id":"\\ud800","type":"session.input_audio_buffer.append","audio":"AAAA"}'
    assert appended_bytes(surrogate) == 3
    # The name quoted inside a string value is not the event.
    assert appended_bytes('{"type":"x","note":"\\"session.input_audio_buffer.append\\""}') is None


APPEND = "session.input_audio_buffer.append"


def test_the_meter_releases_whole_chunks_and_the_rest_at_the_end() -> None:
    meter = AudioMeter(chunk_ms=1000)
    frame = append(b"\x00" * 9600)  # 200 ms
    assert [meter.appended(frame) for _ in range(4)] == [0, 0, 0, 0]
    assert meter.appended(frame) == 1000
    assert meter.appended(append(b"\x00" * 100)) == 0  # 2 ms and 4 bytes
    assert meter.rest() == 2
    assert meter.rest() == 0
    assert meter.total_bytes == 5 * 9600 + 100


def translation_session() -> RelaySession:
    catalog = Catalog(load_settings(None, {"OPENAI_API_KEY": "sk-x"}))
    return RelaySession(
        session_id="rs_t",
        key_id="key_1",
        route=catalog.resolve("gpt-realtime-translate"),
        catalog=catalog,
        opened_at=0.0,
        opened_mono=100.0,
        max_seconds=60,
        intent="translation",
    )


def translation_core(*, budget: bool = False, chunk_ms: int = 400) -> RelayCore:
    return RelayCore(
        translation_session(),
        lambda: 1234.0,
        opened_mono=100.0,
        budget=budget,
        audio_meter=AudioMeter(chunk_ms),
    )


def test_audio_behind_another_appends_prefix_is_counted_or_refused() -> None:
    """The realtime append's prefix skips a frame unread only when nothing else in it can be
    read as another type: an audit sent a translation's audio behind it, unbilled."""
    core = translation_core(chunk_ms=1)
    audio = base64.b64encode(b"\x00" * 9600).decode()  # 200 ms
    twice = f'{{"type":"input_audio_buffer.append","type":"{APPEND}","audio":"{audio}"}}'
    acts = core.client_text(twice.encode())
    assert acts is not None and acts[-1] == Refused("duplicate_member")
    escaped = f'{{"type":"input_audio_buffer.append","\\u0074ype":"{APPEND}","audio":"{audio}"}}'
    acts = core.client_text(escaped.encode())
    assert acts is not None and acts[-1] == Refused("duplicate_member")
    # Its own append's prefix with a second type behind the audio: read, refused.
    behind = f'{{"type":"{APPEND}","audio":"{audio}","type":"session.update"}}'
    acts = core.client_text(behind.encode())
    assert acts is not None and acts[-1] == Refused("duplicate_member")


def test_a_chunk_of_audio_is_forwarded_then_recorded_as_gateway_metered_minutes() -> None:
    core = translation_core()
    frame = append(b"\x00" * 9600).encode()
    assert core.client_text(frame) is None  # 200 ms: forwarded untouched, nothing yet
    acts = core.client_text(frame)
    assert acts is not None
    assert acts[0] == SendUpstream(frame)
    rec = acts[1]
    assert isinstance(rec, Record)
    r = rec.record
    assert (r.usage.kind, r.usage.audio_ms, r.unit, r.metered_by) == (
        "translation",
        400,
        "minute",
        "gateway",
    )
    # $0.034 a minute: 0.4 s is 0.034 * 0.4 / 60 USD = 226,666.67 nanos, rounded once.
    assert (r.model, r.price_key, r.provider_nanos, r.priced) == (
        "gpt-realtime-translate",
        "gpt-realtime-translate",
        226_667,
        True,
    )
    assert core.recorded(True) == ()
    # Other client frames go on as before; upstream frames are never held for the audio.
    assert core.client_text(b'{"type":"session.update","session":{}}') is None
    assert core.upstream_text(b'{"type":"session.output_transcript.delta","delta":"hola"}') is None


def test_the_rest_is_recorded_once_the_session_has_ended() -> None:
    core = translation_core()
    assert core.finish() == ()  # still open: nothing owed yet
    core.client_text(append(b"\x00" * 4800).encode())  # 100 ms
    acts = core.client_closed(1000, "")
    assert Ended() in acts
    (rec,) = core.finish()
    assert isinstance(rec, Record)
    assert rec.record.usage.audio_ms == 100
    assert core.finish() == ()  # once
    assert core.recorded(True) == ()  # after the end, nothing more


def test_a_record_that_cannot_be_kept_ends_the_session() -> None:
    core = translation_core(chunk_ms=1)
    core.client_text(append(b"\x00" * 480).encode())
    acts = core.recorded(False)
    sent = [a for a in acts if isinstance(a, SendClient)]
    assert sent and b"usage_unavailable" in orjson.dumps(orjson.loads(sent[0].data))
    assert CloseClient(1011, "server_error.usage_unavailable") in acts
    # Its audio up to the failure still owes a record (ms counted since: none).
    assert core.finish() == ()


def test_a_budget_is_checked_after_each_chunk_and_a_crossed_one_ends_the_session() -> None:
    core = translation_core(budget=True, chunk_ms=1)
    core.client_text(append(b"\x00" * 480).encode())
    assert core.recorded(True) == (CheckBudget(),)
    assert core.budget_checked(None) == []
    acts = core.budget_checked(QuotaExceeded("over"))
    assert Refused("insufficient_quota") in acts
    assert Ended() in acts


def test_a_realtime_session_counts_no_translation_audio() -> None:
    core = RelayCore(translation_session(), lambda: 0.0, opened_mono=100.0)
    assert core.client_text(append(b"\x00" * 96_000).encode()) is None
    core.client_closed(1000, "")
    assert core.finish() == ()


def delta(pcm: bytes, **fields: object) -> str:
    """A translated audio delta as the provider's docs show it (docs/protocol.md 10)."""
    return orjson.dumps(
        {"type": "session.output_audio.delta", "delta": base64.b64encode(pcm).decode(), **fields}
    ).decode()


def test_output_deltas_are_counted_at_their_own_rate() -> None:
    assert delivered_bytes(delta(b"\x00" * 9600)) == 9600
    # 200 ms at 16 kHz is 6,400 bytes: counted as the 9,600 of 200 ms at 24 kHz.
    assert delivered_bytes(delta(b"\x00" * 6400, sample_rate=16000)) == 9600
    assert delivered_bytes('{"type":"session.output_transcript.delta","delta":"hola"}') is None
    # The type named only inside a string is not the event.
    assert delivered_bytes('{"type":"x","note":"session.output_audio.delta"}') is None


def test_an_output_basis_bills_the_translated_audio_and_not_the_appends() -> None:
    core = RelayCore(
        translation_session(),
        lambda: 1234.0,
        opened_mono=100.0,
        audio_meter=AudioMeter(400, "output"),
    )
    # The client's audio goes up untouched and uncounted.
    assert core.client_text(append(b"\x00" * 96000).encode()) is None
    out = delta(b"\x00" * 9600).encode()
    assert core.upstream_text(out) is None  # 200 ms: forwarded untouched, nothing yet
    acts = core.upstream_text(out)
    assert acts is not None and acts[0] == SendClient(out)
    rec = acts[1]
    assert isinstance(rec, Record)
    assert (rec.record.usage.audio_ms, rec.record.metered_by) == (400, "gateway")
    assert core.recorded(True) == ()
    # Other upstream frames are not counted.
    assert core.upstream_text(b'{"type":"session.output_transcript.delta","delta":"x"}') is None
    # The rest at the end: 100 ms more.
    core.upstream_text(delta(b"\x00" * 4800).encode())
    assert Ended() in core.client_closed(1000, "")
    (end,) = core.finish()
    assert isinstance(end, Record)
    assert end.record.usage.audio_ms == 100
