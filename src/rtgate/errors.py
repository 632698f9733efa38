"""One exception tree for the whole gateway.

Every error the gateway itself raises derives from ``GatewayError`` and knows the three ways it
can reach a client: an HTTP status (before or without a WebSocket), an OpenAI-style ``error``
event, and a WebSocket close code with the ``"<type>.<code>"`` reason OpenAI uses::

    GatewayError
    +-- ConfigError              bad settings at start-up (never reaches a client)
    +-- AuthError                invalid_api_key            401 / close 3000
    |   +-- MissingKey           (no credential: not counted by the failure throttle)
    +-- ModelNotFound            model_not_found            404 / close 4004
    +-- PolicyError              rate/quota/permission refusals (per-key policy)
    |   +-- RateLimited          rate_limit_exceeded        429 / close 3000
    |   +-- QuotaExceeded        insufficient_quota         429 / close 3000
    |   +-- ModelNotAllowed      model_not_allowed          403 / close 3000
    +-- UpstreamError            upstream_unavailable       502 / close 1011
    |   +-- UpstreamAuthFailed   upstream_auth_failed       502 / close 3000
    +-- UnsupportedUpstream      unsupported_upstream       400 / close 1008
    +-- InvalidValue             invalid_value              400 / close 1008
    +-- SessionValueRefused      (the session's own check's) 400 / close 1008
    +-- InvalidSessionStart      invalid_session_start      400 / close 1008
    |   +-- UnknownLiveParameter unknown_parameter          400 / close 1008
    +-- SessionStartedAlready    session_already_started    400 / (the event is dropped)
    +-- LimiterUnavailable       limiter_unavailable        503 / close 1011
    +-- StoreError               store_unavailable          500 / close 1011  (store/port.py)
    +-- LedgerUnavailable        usage_unavailable          500 / close 1011
    +-- RelayFailed              server_error               500 / close 1011
    +-- ShuttingDown             server_shutting_down       503 / close 1001
    +-- SessionExpired           session_expired            --  / close 1001

Foreign exceptions (aiohttp, sqlite3, asyncpg, OSError) are mapped to these at the boundary that
catches them; nothing above the boundary sees a library exception.
"""

from __future__ import annotations

import sys
from typing import ClassVar


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    http_status: ClassVar[int] = 500
    close_code: ClassVar[int] = 1011
    error_type: ClassVar[str] = "server_error"
    #: A class's code; an instance may say its own (``SessionValueRefused``).
    code: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        client_event_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        #: The client event this answers, echoed in ``error.event_id``.
        self.client_event_id = client_event_id
        #: Seconds until a retry can succeed (a rate limit's window), sent over HTTP as
        #: ``Retry-After`` (RFC 9110 section 10.2.3), which the SDKs wait out before retrying.
        self.retry_after = retry_after

    @property
    def close_reason(self) -> str:
        """The close reason OpenAI sends after a fatal error: ``"<type>.<code>"``."""
        return f"{self.error_type}.{self.code}"


class ConfigError(GatewayError):
    """A setting is missing or invalid; the message names the setting."""

    code = "config_error"


class AuthError(GatewayError):
    http_status = 401
    close_code = 3000
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class MissingKey(AuthError):
    """No credential at all: refused without a lookup, so not a failure the throttle counts
    (a probe polling ``/v1/models`` without a key must not lock its address's real keys out)."""


class ModelNotFound(GatewayError):
    http_status = 404
    close_code = 4004
    error_type = "invalid_request_error"
    code = "model_not_found"


class PolicyError(GatewayError):
    http_status = 403
    close_code = 3000
    error_type = "invalid_request_error"
    code = "policy_violation"


class RateLimited(PolicyError):
    http_status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExceeded(PolicyError):
    http_status = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"


class ModelNotAllowed(PolicyError):
    http_status = 403
    code = "model_not_allowed"


class UpstreamError(GatewayError):
    http_status = 502
    close_code = 1011
    error_type = "server_error"
    code = "upstream_unavailable"


class UpstreamRefused(UpstreamError):
    """The upstream answered the handshake with an HTTP status other than 101."""

    def __init__(self, status: int | None, message: str | None = None) -> None:
        super().__init__(message or f"The upstream refused the connection (HTTP {status}).")
        self.status = status


#: What a client is told when the provider refuses the gateway's own key: never the
#: provider's text, which quotes part of that key.
UPSTREAM_AUTH_MESSAGE = (
    "The gateway's credentials were rejected by its upstream provider. "
    "Contact the gateway operator."
)


class UpstreamAuthFailed(UpstreamRefused):
    """The provider refused the gateway's credentials at the handshake (Azure answers a wrong
    key with HTTP 401 before any event; OpenAI upgrades and sends ``invalid_api_key``, which
    the relay session rewords the same way). Not worth a client's retry: close 3000."""

    close_code = 3000
    error_type = "invalid_request_error"
    code = "upstream_auth_failed"

    def __init__(self, status: int | None) -> None:
        super().__init__(status, UPSTREAM_AUTH_MESSAGE)


def upstream_refused(status: int | None) -> UpstreamRefused:
    """The refusal of a handshake the upstream answered with ``status``: 401 and 403 are the
    provider refusing the gateway's key."""
    return UpstreamAuthFailed(status) if status in (401, 403) else UpstreamRefused(status)


class UnsupportedUpstream(GatewayError):
    """The model's upstream does not serve what was asked (the local engine takes no calls and
    does not translate). 1008 (policy) rather than 1011: retrying cannot help, and the SDKs
    reconnect after 1011 (docs/protocol.md 1.1, docs/protocol-live.md 6)."""

    http_status = 400
    close_code = 1008
    error_type = "invalid_request_error"
    code = "unsupported_upstream"


class InvalidValue(GatewayError):
    """A value outside the set OpenAI takes, refused in its words (``invalid_value``: "Invalid
    value: 'x'. Supported values are: ..."), over HTTP or as a socket's error event."""

    http_status = 400
    close_code = 1008
    error_type = "invalid_request_error"
    code = "invalid_value"


class SessionValueRefused(GatewayError):
    """A session template (a client secret's, a call's) holding a value no session could take,
    refused when it is handed in, in the words the session's own check uses: the GA table's
    code, message and param (``protocol/client_schema.py``; ``invalid_value`` for a voice that
    is none, ``integer_above_max_value``, ``unknown_parameter``, ...)."""

    http_status = 400
    close_code = 1008
    error_type = "invalid_request_error"
    code = "invalid_value"

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code = code


class InvalidSessionStart(GatewayError):
    """A GPT-Live socket whose first message is no ``session.start`` naming a model (none before
    the deadline, another event, no ``session.model``): the gateway cannot route it, so it never
    dials. 1008, terminal for the SDKs, as the reference suggests after an admission error
    (docs/protocol-live.md 6; Live's own codes are unverified)."""

    http_status = 400
    close_code = 1008
    error_type = "invalid_request_error"
    code = "invalid_session_start"


class UnknownLiveParameter(InvalidSessionStart):
    """A member GPT-Live does not define, in a ``session.start`` or a session's ``POST``: Live's
    objects are strict (docs/protocol-live.md 2), and the gateway forwards upstream only what
    the protocol defines, so it refuses it as the provider would, before the provider hears."""

    code = "unknown_parameter"


class SessionStartedAlready(GatewayError):
    """A second ``session.start`` on a GPT-Live socket: refused and dropped, the session goes
    on (the first one's model was the one the gateway checked)."""

    http_status = 400
    close_code = 1008
    error_type = "invalid_request_error"
    code = "session_already_started"


class LimiterUnavailable(GatewayError):
    """The shared session counters (Redis) cannot be reached, so a limited key cannot be
    admitted: failing open would lift every key's limits fleet-wide."""

    http_status = 503
    close_code = 1011
    error_type = "server_error"
    code = "limiter_unavailable"


class LedgerUnavailable(GatewayError):
    """What a client hears when its usage can be neither stored nor spilled (the ledger,
    ``metering/ledger.py``, raises it; the relay core ends a session with it)."""

    close_code = 1011
    code = "usage_unavailable"


class RelayFailed(GatewayError):
    """The gateway's own relay failed unexpectedly (a bug): the session still ends with an
    ``error`` event and a reason, as every session the gateway ends."""


class ShuttingDown(GatewayError):
    """This gateway is draining or stopping: a new session is refused, and a live one still
    open at the drain's deadline (or at an immediate stop) is ended; either way the client
    should reconnect, which a balancer sends to a running instance."""

    http_status = 503
    close_code = 1001
    code = "server_shutting_down"


class SessionExpired(GatewayError):
    http_status = 400
    close_code = 1001
    error_type = "invalid_request_error"
    code = "session_expired"

    @property
    def close_reason(self) -> str:
        # OpenAI closes an expired session with the human message as the reason
        # (docs/protocol.md 5.1).
        return self.message


#: The exit status of a ``rtgate serve`` process (or worker) whose start failed on a
#: ``GatewayError``: the database or Redis unreachable, a file changed since the CLI read it.
START_FAILED = 2


def report_failed_start(err: GatewayError) -> int:
    """One line naming what failed, not a traceback, as the CLI reports a bad option; returns
    the status to exit with."""
    sys.stderr.write(f"error: {err.message}\n")
    return START_FAILED
