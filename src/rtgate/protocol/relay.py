"""Every decision of one relayed session, with no I/O (sans-I/O, as h11 and websockets' protocol).

One ``RelayCore`` per session: a client's socket relayed upstream, a client's sideband attached
to one of its calls, or the gateway's own sideband of a call (``client=False``: no client leg).
The pump (``relay/pump.py``) feeds it what the two legs report, the clock's ticks and the outcome
of the effects it asked for; it answers with actions (``protocol/actions.py``), which the pump
performs in order.

Inputs and what they decide:

=====================================  ==========================================================
``upstream_text`` / ``client_text``    a text frame's payload, its UTF-8 bytes as the leg read
                                       them. None: forward those bytes untouched to the other
                                       leg (the hot path: an audio frame costs one prefix test
                                       on bytes, no decode and no allocation); else the actions
                                       for it
``upstream_binary``                    forwarded, never inspected
``client_binary``                      refused (``invalid_event``): the events are text
``upstream_closed`` / ``client_closed``  the close mirrored to the other leg (docs/protocol.md
                                       5.4; 1005 is recorded, 1000 sent, RFC 6455 7.4.1)
``upstream_lost`` / ``client_lost``    upstream gone: ``upstream_unavailable`` and 1011 to the
                                       client; client gone: 1006 recorded, 1001 upstream
``heard_*``                            a ping or pong: a sign of life (``keepalive.py``)
``tick``                               expiry (``session_expired``, 1001) and the keepalive:
                                       ping a quiet leg, sever a dead one (the gateway's one
                                       ``Ticker`` beats every session; the deadline has its own
                                       timer, ``expires_in``)
``committed`` / ``budget_checked``     the outcome of ``Commit`` / ``CheckBudget``
``recorded``                           the outcome of ``Record`` (gateway-counted usage)
``finish``                             at the end: what the session still owes the ledger (a
                                       translation's last audio, a Live session's unconfirmed
                                       total)
``terminate`` / ``hung_up``            an end from outside (operator, shutdown, revocation; a
                                       call hung up through the gateway)
=====================================  ==========================================================

Rules it keeps:

* **The first close wins** (``RelaySession.close``): the session's close code, reason and who
  closed it are recorded once; ``Ended`` is emitted once, after which nothing is forwarded:
  only usage the upstream still sends until its socket closes is recorded (``_meter_unsent``).
* **An error event before every close the gateway makes**: whatever ends a session on the
  gateway's side (expiry, a budget, the ledger, an operator, shutdown, a dead upstream), the
  client gets an OpenAI-style ``error`` event and then a close with its ``"<type>.<code>"``
  reason, never a bare 1011.
* **Commit before forward** (docs/performance.md): a frame that carries usage reaches the client
  only after its ``UsageRecord`` is durable. From ``Commit`` until ``committed`` (and, for a key
  with a budget, until ``budget_checked``), later upstream frames are held, in order, and asked
  to pause upstream reading past ``HOLD_LIMIT``; client frames are never held. A failed commit
  ends the session with ``usage_unavailable`` (sockets and call sidebands alike), the frame
  unforwarded.
* **Each frame is inspected once**: one prefix test, one scan for the marks any collaborator
  needs (both on the frame's bytes), at most one decode and one parse, and the parsed event
  goes to each: metering (``RelaySession``), the transcript (``TranscriptRecorder``), the
  input audio of a translation session (``AudioMeter``: its appends are counted, as the
  provider reports no usage there, and billed in chunks with ``Record``, which holds no frame;
  the rest at the end, ``finish``), beta translation (``BetaTranslator``, docs/protocol.md
  2.4: client frames become GA before anything reads them, upstream frames become beta after
  metering read them) and the per-event policy (``ClientEventGuard``, a refused event is
  answered with an error and dropped; the session goes on).
* **A GPT-Live session** (``RelaySession.live``, docs/protocol-live.md) is the same core with three
  differences: its errors use Live's envelope; a second ``session.start`` is refused (the first,
  whose model the gateway checked, is the ``setup`` frame); and its upstream is never closed
  before ``session.closed`` (4): whatever ends the session on the client's or the gateway's
  side sends ``session.close`` upstream and the session is *closing*, nothing more reaching the
  client, until ``session.closed`` (its final total is recorded with ``Record``), the upstream's
  end, or ``close_grace`` seconds of ticks; then the upstream is closed and ``Ended`` follows.
  A Live session that ends unconfirmed gets its flagged record from ``finish``.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from rtgate.auth.policy import ClientEventGuard
from rtgate.errors import (
    GatewayError,
    LedgerUnavailable,
    SessionExpired,
    SessionStartedAlready,
    UpstreamError,
)
from rtgate.protocol.actions import (
    Action,
    Actions,
    CheckBudget,
    CloseClient,
    CloseUpstream,
    Commit,
    Ended,
    Hangup,
    KeepTranscript,
    PauseUpstream,
    Ping,
    Record,
    Refused,
    ResumeUpstream,
    SendClient,
    SendUpstream,
    Sever,
    Side,
)
from rtgate.protocol.beta import UP_MARKS, BetaTranslator
from rtgate.protocol.client_frames import (
    BINARY_FRAME,
    RefusedFrame,
    UnreadableEvent,
    plain_append,
    read_client,
)
from rtgate.protocol.events import error_event_for
from rtgate.protocol.keepalive import Beat, Cadence, Keepalive
from rtgate.protocol.live import (
    CLOSE_MARK,
    CLOSE_TYPE,
    LIVE_APPEND_PREFIXES,
    LIVE_MARKS,
    SESSION_CLOSE,
    START_MARK,
    START_TYPE,
)
from rtgate.protocol.relay_session import (
    FORWARD_PREFIXES,
    METER_MARKS,
    SESSION_UPDATES,
    RelaySession,
    SessionState,
    parse_event,
)
from rtgate.protocol.transcript import (
    CLIENT_MARK,
    UPSTREAM_MARKS,
    TranscriptRecorder,
)
from rtgate.protocol.translation import AudioMeter
from rtgate.validation import value_at

#: Upstream frames held behind an outstanding commit before the core asks to pause reading
#: upstream (the socket's own buffers bound what arrives after that).
HOLD_LIMIT = 64


def _encoded(marks: Iterable[str]) -> tuple[bytes, ...]:
    """Prefixes and marks as they read in a frame's UTF-8 payload: a frame is tested as the
    bytes its leg read, and decoded only when a collaborator must read it."""
    return tuple(m.encode() for m in dict.fromkeys(marks))


_FORWARD = _encoded(FORWARD_PREFIXES)
#: A Realtime audio append as the SDKs begin it, compact (npm) or spaced (Python's json.dumps).
_APPENDS = (b'{"type":"input_audio_buffer.append"', b'{"type": "input_audio_buffer.append"')
_LIVE_APPENDS = _encoded(LIVE_APPEND_PREFIXES)


def _skipped(data: bytes, prefixes: tuple[bytes, ...]) -> bool:
    """Whether ``data`` is an audio append, spelled as the SDKs spell it, that every parser
    reads as one (client_frames.py): forwarded unread."""
    for prefix in prefixes:
        if data.startswith(prefix):
            return plain_append(data, len(prefix))
    return False


_SESSION_CLOSE = SESSION_CLOSE.encode()
#: What a Realtime session whose client has gone asks of responses still running: stop
#: (docs/protocol.md 2.1), so their ``response.done`` comes, with their usage, at once.
_RESPONSE_CANCEL = b'{"type":"response.cancel"}'
#: The upstream event a Realtime response starts with: from then on its usage is owed.
_RESPONSE_CREATED = '"response.created"'
#: A transcription session's audio turned into an item, whose transcription it owes, and the
#: failure that settles it without usage (``...transcription.completed`` is a meter mark).
_TRANSCRIPTION_MARKS = ('"input_audio_buffer.committed"', 'input_audio_transcription.failed"')
_TRANSCRIPTION_BYTES = _encoded(_TRANSCRIPTION_MARKS)
#: The events that say what a Realtime session is: its input transcription among it.
_STATES = frozenset({"session.created", "session.updated"})
_TRANSCRIPTION_SETTLED = frozenset(
    {
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed",
    }
)

# RFC 6455 7.4: codes that must never be sent in a close frame.
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})


def sendable(code: int | None) -> int:
    """The code to send for a close recorded as ``code`` (1000 for one that cannot be sent)."""
    if code is None or code in _UNSENDABLE or not (1000 <= code <= 4999):
        return 1000
    return code


def expiry_message(seconds: float) -> str:
    minutes = seconds / 60
    span = f"{minutes:g} minutes" if minutes >= 1 else f"{seconds:g} seconds"
    return f"Your session hit the maximum duration of {span}."


_NOTHING: Actions = ()
#: What the provider's key reads as in a frame that carried it.
_REDACTED = b"[redacted]"
_ENDED = Ended()


@dataclass(slots=True)
class _Closing:
    """A session ended whose upstream still owes usage: a Live session waiting for
    ``session.closed``, a Realtime session for the ``response.done`` of the responses it had
    running (cancelled). Its upstream is then closed with ``code`` and ``reason``;
    ``deadline`` is set at the first tick."""

    code: int
    reason: str
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class _UpstreamEnd:
    """An upstream close (``code`` set) or loss, held in its place behind a commit."""

    code: int | None
    reason: str


class RelayCore:
    """The decisions of one relayed session; see the module docstring for the rules."""

    # One per live session: slots, not an instance dict (CPython shares a class's dict keys
    # among its instances up to 30 attributes only; past that each session held a dict of its
    # own, ~1.3 KB more, docs/performance.md 9.25).
    __slots__ = (
        "_alive",
        "_audio_meter",
        "_beta",
        "_budget",
        "_client",
        "_close_asked",
        "_close_grace",
        "_closing",
        "_committing",
        "_down_marks",
        "_early",
        "_error_text",
        "_fast_down",
        "_fast_up",
        "_follows_input",
        "_guard",
        "_hangup_sent",
        "_heard_client",
        "_heard_upstream",
        "_held",
        "_live",
        "_now",
        "_paused",
        "_plain",
        "_recorder",
        "_responding",
        "_secret",
        "_setup",
        "_transcribing",
        "_transcriptions",
        "_up_marks",
        "_upstream_gone",
        "session",
    )

    def __init__(
        self,
        session: RelaySession,
        now: Callable[[], float],
        *,
        client: bool = True,
        setup: str | None = None,
        guard: ClientEventGuard | None = None,
        recorder: TranscriptRecorder | None = None,
        beta: BetaTranslator | None = None,
        budget: bool = False,
        client_beat: Cadence | None = None,
        upstream_beat: Cadence | None = None,
        opened_mono: float = 0.0,
        audio_meter: AudioMeter | None = None,
        close_grace: float = 5.0,
        secret: str | None = None,
    ) -> None:
        """``now``: the wall clock, read only for a frame that is metered or transcribed.
        ``client``: False for the gateway's own call sideband (no client leg: nothing is sent
        to a client; ending it from this side hangs the call up). ``setup``: the session's
        initial ``session.update``, sent before any client frame. ``budget``: whether the key
        has a budget to check after each metered event. ``audio_meter``: a translation
        session's input audio counter (the gateway meters what the provider does not).
        ``close_grace``: on a Live session, how long the upstream may take to answer
        ``session.close`` with ``session.closed``. ``secret``: the provider's key, which no
        frame the upstream sends may carry to the client (a delta, led by its type, is
        forwarded unread)."""
        self.session = session
        self._secret = secret.encode() if secret else None
        self._now = now
        self._client = client
        self._setup = setup.encode() if setup is not None else None
        self._guard = guard
        #: The guard of a transcription session whose key limits models: it judges what the
        #: upstream says the session transcribes with (``ClientEventGuard.upstream_session``).
        self._transcribing = (
            guard if guard is not None and guard.transcription and guard.policy.models else None
        )
        self._recorder = recorder
        self._beta = beta
        self._budget = budget
        self._audio_meter = audio_meter
        self._live = session.live is not None
        self._close_grace = close_grace
        #: A Live session ending, waiting for the upstream's ``session.closed``.
        self._closing: _Closing | None = None
        #: A Live client sent ``session.close`` itself (the gateway need not send it again).
        self._close_asked = False
        #: The gateway's answers to client events refused before the upstream's first event
        #: (its ``session.created``, Live's ``session.started``): they follow it, as the
        #: provider's own answers would; None once it came (docs/protocol.md 2.2).
        self._early: list[bytes] | None = [] if client else None
        self._error_text = functools.partial(error_event_for, live=self._live)
        self._alive = {
            side: Keepalive(beat, opened_mono)
            for side, beat in ((Side.CLIENT, client_beat), (Side.UPSTREAM, upstream_beat))
            if beat is not None and (client or side is Side.UPSTREAM)
        }
        #: Whether anything came from each leg since the last tick (set per frame: one store).
        self._heard_client = self._heard_upstream = False
        # The marks an upstream / client frame must contain to be parsed at all.
        down = METER_MARKS + (UPSTREAM_MARKS if recorder is not None else ())
        if self._live:
            down += LIVE_MARKS
        #: The Realtime responses the upstream runs (``response.created`` without its
        #: ``response.done`` yet): if the session ends meanwhile, the upstream is asked to
        #: cancel them and kept open, within ``close_grace``, for their usage. Not for a
        #: translation (metered by its audio, no responses) nor a call's sideband, the
        #: gateway's or a client's (the call runs on, and its own sideband meters it).
        self._responding: set[str] | None = None
        #: The upstream's end was among the frames held when the session ended: nothing it
        #: owed can come any more, so the end waits for none (``_owed``).
        self._upstream_gone = False
        #: Committed audio (item ids) whose transcription has not come yet: owed as a running
        #: response is, and waited for the same way (no cancel). A transcription session's
        #: always; a conversation's while the upstream says it transcribes its input
        #: (``_follow_input_transcription``); else None.
        self._transcriptions: set[str] | None = None
        #: Whether a conversation's input transcription is followed (a metered client session).
        self._follows_input = False
        if not self._live and audio_meter is None and client and session.metered:
            self._responding = set()
            down += (_RESPONSE_CREATED,)
            if session.intent == "transcription":
                self._transcriptions = set()
                down += _TRANSCRIPTION_MARKS
            else:
                self._follows_input = True
        self._down_marks = _encoded(down)
        up: tuple[str, ...] = UP_MARKS if beta is not None else ()
        if recorder is not None:
            up += (CLIENT_MARK,)
        if self._live:
            up += (START_MARK, CLOSE_MARK)
        self._up_marks = tuple(dict.fromkeys(up))
        #: Whether an upstream audio frame may skip everything (no beta rename, no transcript
        #: and nothing held); recomputed when any of those changes.
        self._plain = beta is None and recorder is None
        if audio_meter is not None and audio_meter.basis == "output":
            self._plain = False  # every translated audio delta is counted (upstream_text)
        self._fast_down = self._plain
        self._fast_up = True
        #: Upstream frames waiting behind an outstanding commit or budget check (None: none).
        #: (A binary frame waits as the ``SendClient`` it becomes.)
        self._held: deque[bytes | SendClient | _UpstreamEnd] | None = None
        #: The metered frame whose record is being committed.
        self._committing: bytes | None = None
        self._paused = False
        self._hangup_sent = False

    # -- state --------------------------------------------------------------------------------
    @property
    def open(self) -> bool:
        """Until ``Ended``: a Live session still waiting for ``session.closed`` is open too."""
        return self.session.state is SessionState.OPEN or self._closing is not None

    @property
    def has_client(self) -> bool:
        return self._client

    def awaiting_pong(self, side: Side) -> bool:
        """Whether a ping to ``side`` is unanswered (the pump may then ask the kernel whether
        the leg is mid-way through a large frame, and report ``heard_*``)."""
        alive = self._alive.get(side)
        return alive is not None and alive.awaiting_pong

    def kernel_heard(self, side: Side, quiet: float | None) -> None:
        """The kernel received bytes on ``side`` ``quiet`` seconds ago (None: unknown): a peer
        still sending one large frame, within the pong deadline, is alive."""
        alive = self._alive.get(side)
        if alive is not None and quiet is not None and quiet < alive.cadence.pong_within:
            if side is Side.CLIENT:
                self._heard_client = True
            else:
                self._heard_upstream = True

    def expires_in(self, now_mono: float) -> float:
        """Seconds until the core must be ticked at the latest (0 once past): the session's
        deadline, or a closing Live session's wait for ``session.closed`` (its grace starts
        at the first tick or query after the close, as in ``_closing_tick``). The pump arms
        its one timer with it and the ticker's beats do the rest."""
        closing = self._closing
        if closing is not None:
            if closing.deadline is None:
                closing.deadline = now_mono + self._close_grace
            return max(0.0, closing.deadline - now_mono)
        return max(0.0, self.session.deadline - now_mono)

    def start(self) -> Actions:
        """What the session opens with: the setup frame, before any client frame."""
        return (SendUpstream(self._setup),) if self._setup is not None else _NOTHING

    # -- upstream -> client -------------------------------------------------------------------
    def _error_event(self, err: GatewayError) -> bytes:
        """The ``error`` event the client gets for ``err`` (Live's envelope on a Live session)."""
        return self._error_text(err).encode()

    def _answer(self, err: GatewayError) -> tuple[Action, ...]:
        """The client's answer to a client event refused (the session goes on): held while
        the upstream has said nothing (``_early``), up to ``HOLD_LIMIT`` answers; a client
        that sends more refused events than that before the session exists gets them at
        once, so what is held stays bounded."""
        frame = self._error_event(err)
        early = self._early
        if early is not None and len(early) < HOLD_LIMIT:
            early.append(frame)
            return (Refused(err.code),)
        return (SendClient(frame), Refused(err.code))

    def _take_early(self) -> tuple[SendClient, ...]:
        """The answers held for the upstream's first event, to send now (once)."""
        early, self._early = self._early or (), None
        return tuple(map(SendClient, early))

    def upstream_text(self, data: bytes) -> Actions | None:
        self._heard_upstream = True
        if self._fast_down and data.startswith(_FORWARD):
            return None
        if self._secret is not None and self._secret in data:
            # Only an invalid_api_key quotes it, and only part of it, as far as known
            # (session.on_upstream_event replaces that error): any other frame that carries it
            # reaches the client without it (README, Security).
            redacted = data.replace(self._secret, _REDACTED)
            acts = self._upstream_event(redacted)
            return (SendClient(redacted),) if acts is None else acts
        return self._upstream_event(data)

    def _upstream_event(self, data: bytes) -> Actions | None:
        """``upstream_text`` past its fast path and the key's check."""
        if self._early is not None:
            return self._first_upstream_text(data)
        if self.session.state is not SessionState.OPEN:
            if self._closing is not None:
                return self._closing_text(data)
            # Nothing reaches the client after the end, but what the upstream sends until its
            # socket closes, it bills: recorded (a Gemini leg's last usage, flushed as it
            # closes, was dropped here).
            return self._meter_unsent(data) or _NOTHING
        meter = self._audio_meter
        if meter is not None and meter.basis == "output" and (ms := meter.delivered(data.decode())):
            # A translation billed by its output: the chunk's record beside the frame, which
            # goes on as any other (docs/protocol.md 10).
            rec = self.session.meter_translation_audio(ms, self._now())
            out = self._hold(data) if self._held is not None else self._down(data)
            forwarded = (SendClient(data),) if out is None else out
            return forwarded if rec is None else (*forwarded, Record(rec))
        if self._held is not None:
            return self._hold(data)
        return self._down(data)

    def _first_upstream_text(self, data: bytes) -> Actions | None:
        """The upstream's first event: the answers held for it (``_early``) follow it; behind
        it, if it is held itself (a metered frame waiting for its commit)."""
        early = self._take_early()
        acts = self._upstream_event(data)
        if not early or self.session.state is not SessionState.OPEN:
            return acts
        if self._held is not None:
            self._held.extend(early)
            return acts
        return (*(acts if acts is not None else (SendClient(data),)), *early)

    def upstream_binary(self, data: bytes) -> Actions | None:
        self._heard_upstream = True
        # Binary frames carry no event; they keep their place behind a held metered frame.
        if self.session.state is not SessionState.OPEN:
            return _NOTHING
        if self._held is not None:
            return self._hold(SendClient(data, binary=True))
        if self._early is not None:
            # The upstream spoke, if not in an event: what was held waits no longer.
            return (SendClient(data, binary=True), *self._take_early())
        return None

    def _down(self, data: bytes) -> Actions | None:
        """One upstream text frame, read once: metered, transcribed, translated, forwarded."""
        session = self.session
        # An audio or text delta matters to no collaborator but beta's rename: never scanned.
        if data.startswith(_FORWARD) or not any(m in data for m in self._down_marks):
            if self._beta is None:
                return None
            return self._to_client(data, None, None)
        text = data.decode()
        event = parse_event(text)
        now = self._now()
        rec = session.on_upstream_event(event, text, now)
        if self._responding is not None:
            self._track_owed(event)
        if self._follows_input and isinstance(event, dict) and event.get("type") in _STATES:
            self._follow_input_transcription(event.get("session"))
        watch = self._transcribing
        if watch is not None and isinstance(event, dict) and event.get("type") in SESSION_UPDATES:
            # What the provider says it transcribes with is what is billed: a model the key
            # may not use ends the session, whichever update led there.
            refusal = watch.upstream_session(event.get("session"))
            if refusal is not None:
                return (Refused(refusal.code), *self._end(refusal, "gateway"))
        out: list[Action] = []
        if self._recorder is not None and isinstance(event, dict):
            self._recorder.on_upstream_event(event, now)
            if self._recorder.pending:
                out.append(KeepTranscript(self._recorder.drain()))
        parsed = event if isinstance(event, dict) else None
        if rec is None:
            return self._to_client(data, parsed, out)
        if isinstance(rec, str):
            # A replacement (the provider quoting our key back): sent as it is.
            out.append(SendClient(rec.encode()))
            return out
        out.append(Commit(rec, text))
        self._committing = data
        self._held = deque()
        self._fast_down = False
        return out

    def _to_client(
        self, data: bytes, parsed: dict[str, Any] | None, out: list[Action] | None
    ) -> Actions | None:
        if self._beta is None:
            if not out:
                return None
            out.append(SendClient(data))
            return out
        sent = self._as_beta(data, parsed)
        if out is None:
            out = []
        if sent is not None:
            out.append(SendClient(sent))
        return out

    def _as_beta(self, data: bytes, parsed: dict[str, Any] | None = None) -> bytes | None:
        """An upstream frame as a beta client reads it (None: dropped); the same bytes when
        the translator leaves it as it is."""
        assert self._beta is not None
        text = data.decode()
        sent = self._beta.to_client(text, parsed)
        if sent is None:
            return None
        return data if sent is text else sent.encode()

    def _hold(self, data: bytes | SendClient | _UpstreamEnd) -> Actions:
        held = self._held
        assert held is not None
        held.append(data)
        if len(held) > HOLD_LIMIT and not self._paused:
            self._paused = True
            return (PauseUpstream(),)
        return _NOTHING

    def committed(self, ok: bool) -> Actions:
        """The outcome of the last ``Commit``: the frame goes on (then the budget check, or the
        frames held behind it), or the session ends with ``usage_unavailable``."""
        frame, self._committing = self._committing, None
        if frame is None or self.session.state is not SessionState.OPEN:
            return _NOTHING
        if not ok:
            # Unbillable usage must not flow on: the frame stops here (the frames held behind
            # it are metered as the session ends, ``_stop``, and forwarded nowhere).
            return self._end(
                LedgerUnavailable(
                    "Usage could not be recorded, so the session was ended."
                    if self._client
                    else "Usage could not be recorded, so the call was ended."
                ),
                "gateway",
            )
        out: list[Action] = []
        if self._client:
            sent = frame if self._beta is None else self._as_beta(frame)
            if sent is not None:
                out.append(SendClient(sent))
        if self._budget:
            # Billed and delivered; has the key crossed a budget? Frames wait for the answer.
            out.append(CheckBudget())
            return out
        self._release(out)
        return out

    def budget_checked(self, refusal: GatewayError | None) -> Actions:
        if self.session.state is not SessionState.OPEN:
            return _NOTHING
        if refusal is not None:
            out: list[Action] = [Refused(refusal.code)]
            out.extend(self._end(refusal, "gateway"))
            return out
        out = []
        if self._committing is None:
            # (A check after a ``Record`` must not release frames held behind a ``Commit``.)
            self._release(out)
        return out

    # -- usage the gateway counts (a translation's input audio) ---------------------------------
    def _record_audio(self, ms: int, data: bytes) -> Actions:
        out: list[Action] = [SendUpstream(data)]
        rec = self.session.meter_translation_audio(ms, self._now())
        if rec is not None:
            out.append(Record(rec))
        return out

    def recorded(self, ok: bool) -> Actions:
        """The outcome of a ``Record``: the session goes on (the key's budget checked, if it
        has one), or ends with ``usage_unavailable``: audio that cannot be billed must stop."""
        if self.session.state is not SessionState.OPEN:
            return _NOTHING
        if not ok:
            return self._end(
                LedgerUnavailable("Usage could not be recorded, so the session was ended."),
                "gateway",
            )
        return (CheckBudget(),) if self._budget else _NOTHING

    def finish(self) -> Actions:
        """Once the session has ended: the record of the audio counted since the last chunk
        (the pump performs it before it tears down); a Live session's flagged record when the
        provider never confirmed its total; nothing for any other session."""
        if self.session.state is SessionState.OPEN:
            return _NOTHING
        if self._live:
            rec = self.session.unconfirmed_live(self._now())
            return (Record(rec),) if rec is not None else _NOTHING
        meter = self._audio_meter
        if meter is None:
            return _NOTHING
        rec = self.session.meter_translation_audio(meter.rest(), self._now())
        return (Record(rec),) if rec is not None else _NOTHING

    def _release(self, out: list[Action]) -> None:
        """Forward the frames held behind a commit, in order, until one needs a commit itself
        (it holds the rest again)."""
        held, self._held = self._held, None
        self._fast_down = self._plain
        while held:
            if self.session.state is not SessionState.OPEN:
                # A released frame ended the session (a model refused): the rest is metered
                # as any frame held at an end is, not released (a review's find).
                self._held = held
                stopped = self._stop()
                at = next((i for i, a in enumerate(out) if isinstance(a, Ended)), len(out))
                out[at:at] = stopped  # recorded before the end, as on every other path
                return
            data = held.popleft()
            if isinstance(data, _UpstreamEnd):
                # The upstream's end, in its place after the frames it sent before it.
                if data.code is None:
                    out.extend(self.upstream_lost(data.reason))
                else:
                    out.extend(self.upstream_closed(data.code, data.reason))
                return
            if isinstance(data, SendClient):
                out.append(data)  # a binary frame
            elif (acts := self._down(data)) is None:
                out.append(SendClient(data))
            else:
                out.extend(acts)
            if self._held is not None:
                # That frame is being committed: the rest stay held behind it.
                self._held = held
                return
        if self._paused:
            self._paused = False
            out.append(ResumeUpstream())

    # -- client -> upstream -------------------------------------------------------------------
    def client_text(self, data: bytes) -> Actions | None:
        self._heard_client = True
        # An append as the SDKs write it is skipped unread; any other spelling is read
        # (client_frames.py: a repeated or escaped "type" makes it another event upstream).
        if self._fast_up and _skipped(data, _APPENDS):
            return None
        if self.session.state is not SessionState.OPEN:
            return _NOTHING
        if self._live and _skipped(data, _LIVE_APPENDS):
            return None
        # Any other client frame is read as text (few: a session's events, a translation's
        # appends).
        text = data.decode()
        try:
            return self._client_event(data, text)
        except RefusedFrame as refused:
            return self._answer(refused)

    def _client_event(self, data: bytes, text: str) -> Actions | None:
        meter = self._audio_meter
        if meter is not None:
            ms = meter.appended(text)
            if ms is not None:
                # Forwarded at once; a chunk's record holds no frame (docs/protocol.md 10).
                return self._record_audio(ms, data) if ms else None
        guard = self._guard
        reads = guard is not None and guard.reads(text)
        if not reads and not any(m in text for m in self._up_marks):
            # An escaped name ("session\u002eupdate") is the event it names, unspelt: a frame
            # with an escape is read whenever anything reads frames.
            if "\\" not in text or (guard is None and not self._up_marks):
                return None
            reads = guard is not None
        # Read, or refused: a frame the gateway cannot read might be an event to the
        # upstream's parser, one the policy would refuse (client_frames.py).
        event = read_client(text)
        out: list[Action] = []
        if self._beta is not None:
            ga = self._beta.event_to_upstream(event)
            if ga is not event:
                event, data = ga, orjson.dumps(ga)
                # The guard judges the GA event (a beta transcription_session.update is a
                # session.update now).
                reads = guard is not None and guard.reads(data.decode())
        if self._recorder is not None:
            self._recorder.on_client_event(event, self._now())
            if self._recorder.pending:
                out.append(KeepTranscript(self._recorder.drain()))
        if reads and guard is not None and (refusal := guard.check_event(event)) is not None:
            # Refusals of single events are not fatal: answer, drop, go on.
            out.extend(self._answer(refusal))
            return out
        if self._live and event.get("type") == START_TYPE:
            # The session started with the client's first event, whose model was checked.
            eid = event.get("event_id")
            again = SessionStartedAlready(
                "This Live session has started already.",
                param="type",
                client_event_id=eid if isinstance(eid, str) else None,
            )
            out.extend(self._answer(again))
            return out
        if self._live and event.get("type") == CLOSE_TYPE:
            self._close_asked = True
        out.append(SendUpstream(data))
        return out

    def client_binary(self, data: bytes) -> Actions | None:
        """Refused: the protocol's events are text, and a binary frame no part of the gateway
        reads could carry one to an upstream that parses it (client_frames.py)."""
        self._heard_client = True
        if self.session.state is not SessionState.OPEN:
            return _NOTHING
        return self._answer(UnreadableEvent(BINARY_FRAME))

    # -- closes ---------------------------------------------------------------------------------
    def upstream_closed(self, code: int, reason: str) -> Actions:
        """The upstream sent a close frame: mirrored to the client (our key's rejection
        reworded); a call the provider ended needs no hangup. Behind a held metered frame it
        waits its turn, so the frames before it are delivered first."""
        if self._closing is not None:
            return self._closed_upstream()
        if self._held is not None and self.session.state is SessionState.OPEN:
            return self._hold(_UpstreamEnd(code, reason))
        code, reason = self.session.mirrored_close(code, reason)
        if not self.session.close(code, reason, "upstream"):
            return _NOTHING
        stopped = self._stop()
        if not self._client:
            return (*stopped, _ENDED)
        return (*stopped, *self._take_early(), CloseClient(sendable(code), reason), _ENDED)

    def upstream_lost(self, message: str = "The upstream connection was lost.") -> Actions:
        """The upstream is gone without a close frame: the client hears why, then 1011. A call
        sideband's drop hangs its call up, as a sideband that stops answering does (``_dead``):
        the call's media path is not this socket, and the call would run on at the provider
        with nothing metering it (an audit's find; the provider closes a sideband whose call
        ended, with a close frame, ``upstream_closed``)."""
        if self._closing is not None:
            return self._closed_upstream()
        if self._held is not None and self.session.state is SessionState.OPEN:
            return self._hold(_UpstreamEnd(None, message))
        if not self._client:
            if not self.session.close(1006, "", "upstream"):
                return _NOTHING
            out: list[Action] = [*self._stop()]
            if not self._hangup_sent:
                self._hangup_sent = True
                out.append(Hangup())
            out.append(_ENDED)
            return out
        err = UpstreamError(message)
        if not self.session.close(err.close_code, err.close_reason, "upstream"):
            return _NOTHING
        return (
            *self._stop(),
            *self._take_early(),
            SendClient(self._error_event(err)),
            CloseClient(err.close_code, err.close_reason),
            _ENDED,
        )

    def client_closed(self, code: int, reason: str) -> Actions:
        """A close frame from the client (1005 when it had none), or a protocol error its leg
        closed for (1009, 1007): mirrored upstream."""
        if not self.session.close(code, reason, "client"):
            return _NOTHING
        stopped = self._stop()
        return (*stopped, *self._close_upstream(sendable(code), reason))

    def client_lost(self) -> Actions:
        if not self.session.close(1006, "client disconnected", "client"):
            return _NOTHING
        stopped = self._stop()
        return (*stopped, *self._close_upstream(1001, "client disconnected"))

    def heard_client(self) -> None:
        self._heard_client = True

    def heard_upstream(self) -> None:
        self._heard_upstream = True

    # -- time -----------------------------------------------------------------------------------
    def tick(self, now_mono: float) -> Actions:
        """The pump's timer: expiry first, then one keepalive beat per watched leg."""
        session = self.session
        if session.state is not SessionState.OPEN:
            return _NOTHING if self._closing is None else self._closing_tick(now_mono)
        if session.expired(now_mono):
            return self._end(SessionExpired(expiry_message(session.max_seconds)), "gateway")
        out: list[Action] = []
        for side, alive in self._alive.items():
            if side is Side.CLIENT:
                heard, self._heard_client = self._heard_client, False
            else:
                heard, self._heard_upstream = self._heard_upstream, False
            beat = alive.tick(heard, now_mono)
            if beat is Beat.PING:
                out.append(Ping(side))
            elif beat is Beat.DEAD:
                out.extend(self._dead(side))
                return out
        return out

    def _dead(self, side: Side) -> Actions:
        """A leg stopped answering pings: ended as if its connection had dropped (client: 1006
        and the upstream gets 1001; upstream: ``upstream_unavailable`` and 1011 to the client,
        and a call is hung up)."""
        if side is Side.CLIENT:
            if not self.session.close(1006, "client disconnected", "client"):
                return _NOTHING
            stopped = self._stop()
            return (
                Sever(Side.CLIENT),
                *stopped,
                *self._close_upstream(1001, "client disconnected"),
            )
        out: list[Action] = [Sever(Side.UPSTREAM)]
        if not self._client:
            err = UpstreamError("The upstream stopped responding.")
            out.extend(self._end(err, "upstream"))
            return out
        out.extend(self.upstream_lost("The upstream stopped responding."))
        return out

    # -- ends from outside ------------------------------------------------------------------------
    def terminate(self, err: GatewayError, by: str = "operator") -> Actions:
        """End the session with ``err`` (an operator's forced close, shutdown, a revoked
        secret); a session already ending is left alone."""
        return self._end(err, by)

    def hung_up(self) -> Actions:
        """A call sideband: the client hung the call up through the gateway (no second
        hangup)."""
        self._hangup_sent = True
        # A Live call's provider answers the hangup with session.closed (no session.close).
        self._close_asked = True
        if not self.session.close(1000, "call hung up", "client"):
            return _NOTHING
        stopped = self._stop()
        return (*stopped, *self._close_upstream(1000, "call hung up"))

    def _end(self, err: GatewayError, by: str) -> Actions:
        """The gateway ends the session: the client hears why, then both legs close with its
        code; a call sideband hangs its call up first."""
        if not self.session.close(err.close_code, err.close_reason, by):
            return _NOTHING
        stopped = self._stop()
        code, reason = err.close_code, err.close_reason
        if not self._client:
            out: list[Action] = [*stopped]
            if not self._hangup_sent:
                self._hangup_sent = True
                out.append(Hangup())
            # (A Live call's sideband asks for the final total first; the hangup follows.)
            out += self._close_upstream(sendable(code), reason)
            return out
        return (
            *stopped,
            *self._take_early(),
            SendClient(self._error_event(err)),
            CloseClient(sendable(code), reason),
            *self._close_upstream(sendable(code), reason),
        )

    # -- an end that waits for the usage the upstream still owes (docs/protocol-live.md 4) ------
    def _track_owed(self, event: Any) -> None:
        """``response.created`` opens a response the session owes usage for; its
        ``response.done`` settles it. While transcriptions are followed, ``input_audio_buffer.
        committed`` opens one, its item's ``...transcription.completed`` (or ``.failed``)
        settles it."""
        responding = self._responding
        if responding is None or not isinstance(event, dict):
            return
        etype = event.get("type")
        transcriptions = self._transcriptions
        if transcriptions is not None:
            item = event.get("item_id")
            if isinstance(item, str):
                if etype == "input_audio_buffer.committed":
                    transcriptions.add(item)
                elif etype in _TRANSCRIPTION_SETTLED:
                    transcriptions.discard(item)
        if etype != "response.created" and etype != "response.done":
            return
        response = event.get("response")
        rid = response.get("id") if isinstance(response, dict) else None
        if not isinstance(rid, str):
            return
        if etype == "response.created":
            responding.add(rid)
        else:
            responding.discard(rid)

    def _follow_input_transcription(self, session: Any) -> None:
        """A conversation whose upstream says it transcribes the input audio
        (``session.audio.input.transcription``, docs/protocol.md 4.2) owes each committed
        item's transcription, billed by its model: waited for at the end as a transcription
        session's are (their marks read from then on); one that stops transcribing owes none."""
        on = isinstance(value_at(session, ("audio", "input", "transcription")), dict)
        if on and self._transcriptions is None:
            self._transcriptions = set()
            self._down_marks = (*self._down_marks, *_TRANSCRIPTION_BYTES)
        elif not on and isinstance(session, dict) and self._transcriptions is not None:
            self._transcriptions = None
            self._down_marks = tuple(m for m in self._down_marks if m not in _TRANSCRIPTION_BYTES)

    def _owed(self) -> bool:
        """Whether the upstream still owes usage: a Live total not confirmed, a Realtime
        response without its ``response.done``, or a transcription not come yet."""
        if self._upstream_gone:
            return False
        live = self.session.live
        if live is not None:
            return not live.confirmed
        return bool(self._responding) or bool(self._transcriptions)

    def _close_upstream(self, code: int, reason: str) -> Actions:
        """Close the upstream and end, unless it still owes usage: a Live session asks for its
        final total (``session.close``), a Realtime session cancels the responses it runs (the
        provider bills what they used, and the key pays it), and the upstream is closed once
        that usage came (``_closing_text``), the upstream ended, or ``close_grace`` passed
        (``_closing_tick``). Nothing more reaches the client meanwhile."""
        if not self._owed():
            return (CloseUpstream(code, reason), _ENDED)
        self._closing = _Closing(code, reason)
        if self.session.live is None:
            # A transcription is not cancelled: it is waited for.
            return (SendUpstream(_RESPONSE_CANCEL),) if self._responding else _NOTHING
        return (SendUpstream(_SESSION_CLOSE),) if not self._close_asked else _NOTHING

    def _closing_text(self, data: bytes) -> Actions:
        """An upstream frame of a closing session: its usage recorded (the frame goes nowhere:
        the client has gone or was told why); the last usage owed ends the wait."""
        out = self._meter_unsent(data)
        if not self._owed():
            out.extend(self._closed_upstream(close=True))
        return out or _NOTHING

    def _meter_unsent(self, data: bytes) -> list[Action]:
        """An upstream frame of a session that has ended, which reaches nobody: its usage
        recorded, and the response it opens or settles tracked."""
        if data.startswith(_FORWARD) or not any(m in data for m in self._down_marks):
            return []
        text = data.decode()
        event = parse_event(text)
        rec = self.session.on_upstream_event(event, text, self._now())
        self._track_owed(event)
        return [Record(rec)] if rec is not None and not isinstance(rec, str) else []

    def _closing_tick(self, now_mono: float) -> Actions:
        closing = self._closing
        assert closing is not None
        if closing.deadline is None:
            closing.deadline = now_mono + self._close_grace
        if now_mono < closing.deadline:
            return _NOTHING
        return self._closed_upstream(close=True)

    def _closed_upstream(self, *, close: bool = False) -> Actions:
        """The closing Live session ends: its upstream closed with the session's code, unless
        it ended itself."""
        closing, self._closing = self._closing, None
        if closing is None:
            return _NOTHING
        if not close:
            return (_ENDED,)
        return (CloseUpstream(closing.code, closing.reason), _ENDED)

    def _stop(self) -> Actions:
        """After the first close nothing is forwarded: not even an audio frame. The upstream
        frames held behind a commit or a budget check are metered all the same, as a closing
        session's are (``_meter_unsent``): the provider sent them, so it bills them (an audit
        found a ``response.done`` or a transcription held there dropped unrecorded when the
        session ended meanwhile, and a ``response.created`` among them never waited for)."""
        held = self._held
        self._fast_down = self._fast_up = False
        self._held = None
        self._committing = None
        if not held:
            return _NOTHING
        out: list[Action] = []
        while held:
            data = held.popleft()
            if isinstance(data, _UpstreamEnd):
                # Nothing the upstream sent after its end: what it owed will never come.
                self._upstream_gone = True
                break
            if isinstance(data, bytes):
                out.extend(self._meter_unsent(data))
        return out
