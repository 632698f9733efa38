"""Prometheus metrics, one registry per application; with ``--workers N``, every worker's
values in files of the run's directory (``METRICS_DIR``), which any worker's scrape sums.

The relay's hot path never touches a metric: pumps count frames and bytes in plain ints, and the
relay's pump flushes them here once a second and at the end of the session.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rtgate.metering.cost import NANOS_PER_USD
from rtgate.metering.record import UsageRecord
from rtgate.protocol.usage import TOKEN_FIELDS
from rtgate.worker import METRICS_DIR

CONTENT_TYPE = CONTENT_TYPE_LATEST

_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        #: The workers' shared directory (``--workers N``): each value is kept in a file there,
        #: and a scrape sums every worker's; a live gauge counts the workers running (the
        #: parent removes a gone worker's, ``workers.Workers``).
        self.shared_dir = os.environ.get(METRICS_DIR)
        self.live = Gauge(
            "rtgate_live_sessions",
            "Sessions being relayed now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.started = Counter("rtgate_sessions_started", "Sessions opened.", ["model"], registry=r)
        self.ended = Counter(
            "rtgate_sessions_ended", "Sessions ended, by close code.", ["code", "by"], registry=r
        )
        self.duration = Histogram(
            "rtgate_session_duration_seconds",
            "Session length.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.connect = Histogram(
            "rtgate_upstream_connect_seconds",
            "Time to open the upstream WebSocket.",
            ["upstream"],
            registry=r,
        )
        self.latency = Histogram(
            "rtgate_relay_latency_seconds",
            "Time a sampled frame spends in the gateway (receive to sent).",
            ["direction"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.frames = Counter("rtgate_frames", "Frames relayed.", ["direction"], registry=r)
        self.bytes = Counter("rtgate_bytes", "Payload bytes relayed.", ["direction"], registry=r)
        self._frames_up, self._frames_down = self.frames.labels("up"), self.frames.labels("down")
        self._bytes_up, self._bytes_down = self.bytes.labels("up"), self.bytes.labels("down")
        self.tokens = Counter("rtgate_tokens", "Tokens metered.", ["model", "kind"], registry=r)
        #: ``usage``'s labelled counters, by (metric, label values).
        self._series: dict[tuple[str, str, str], Counter] = {}
        self.audio_seconds = Counter(
            "rtgate_audio_seconds",
            "Audio metered by duration (usage reported in seconds), by the unit of its price.",
            ["model", "unit"],
            registry=r,
        )
        self.cost = Counter(
            "rtgate_cost_usd", "Charged cost metered.", ["key", "model"], registry=r
        )
        self.review = Counter(
            "rtgate_usage_review",
            "Usage records whose usage could not be read in full, kept for review.",
            ["reason"],
            registry=r,
        )
        self.refusals = Counter(
            "rtgate_policy_refusals", "Sessions or events refused.", ["reason"], registry=r
        )
        # The ledger (metering/ledger.py): 1 while the store does not take usage in time and
        # records go to the local spill; how many spilled records the store does not have yet;
        # records that could be kept nowhere (their sessions were ended).
        self.ledger_spilling = Gauge(
            "rtgate_ledger_spilling",
            "1 while usage is spilled locally.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ledger_waiting = Gauge(
            "rtgate_ledger_spilled_records",
            "Usage records in the local spill, not in the store yet.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_unrecorded = Counter(
            "rtgate_usage_unrecorded",
            "Usage records neither stored nor spilled (their sessions were ended).",
            registry=r,
        )
        self.auth_throttled = Counter(
            "rtgate_auth_throttled",
            "Authentications refused unchecked: their address had failed too often.",
            registry=r,
        )

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def usage(self, rec: UsageRecord) -> None:
        """Called per usage record: each labelled counter is looked up once (``labels()`` takes
        a lock and builds a key, ~2 µs a call, a dozen calls a record) and kept, as Prometheus
        keeps its series: one per label set seen."""
        series = self._series
        usage = rec.usage
        for kind in TOKEN_FIELDS:
            n = getattr(usage, kind)
            if n:
                key = ("tokens", rec.model, kind)
                counter = series.get(key)
                if counter is None:
                    counter = series[key] = self.tokens.labels(rec.model, kind)
                counter.inc(n)
        if usage.audio_ms:
            self.audio_seconds.labels(rec.model, rec.unit).inc(usage.audio_seconds)
        if rec.charged_nanos:
            key = ("cost", rec.key_id, rec.model)
            counter = series.get(key)
            if counter is None:
                counter = series[key] = self.cost.labels(rec.key_id, rec.model)
            counter.inc(rec.charged_nanos / NANOS_PER_USD)
        if rec.review is not None:
            self.review.labels(rec.review).inc()

    def relayed(self, frames_up: int, frames_down: int, bytes_up: int, bytes_down: int) -> None:
        """Called by every session's pump each tick: the labelled counters are looked up once
        (``labels()`` takes a lock and builds a key each time, ~2 µs)."""
        if frames_up:
            self._frames_up.inc(frames_up)
            self._bytes_up.inc(bytes_up)
        if frames_down:
            self._frames_down.inc(frames_down)
            self._bytes_down.inc(bytes_down)

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        # Every worker's files, summed (counters, histograms) or as each gauge's mode says.
        every = CollectorRegistry()
        MultiProcessCollector(every, path=self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(every)
