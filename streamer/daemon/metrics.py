"""Every ``heimdall_*`` Prometheus series in one place (docs/metrics.md lists them with their labels).

``Metrics(registry=...)`` is built by the daemon (``streamer.daemon.app.Daemon``); tests pass their own
``CollectorRegistry``. Nothing is registered at import time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """The daemon's metrics; also the ``DropCounter`` handed to adapters."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Per receiver.
        self.samples_received = Counter(
            "heimdall_samples_received", "IQ samples delivered by the adapter (input rate)", ["receiver"], registry=r
        )
        self.samples_dropped = Counter(
            "heimdall_samples_dropped",
            "IQ samples lost, by reason; stage=source: lost before delivery, stage=pipeline: received then dropped",
            ["receiver", "reason", "stage"], registry=r
        )
        self.samples_used = Counter(
            "heimdall_samples_used", "IQ samples that went into an emitted window (input rate)", ["receiver"], registry=r
        )
        self.samples_buffered = Gauge(
            "heimdall_samples_buffered",
            "IQ samples held in the channelizer and ring buffer (input rate)",
            ["receiver"],
            registry=r,
        )
        self.bad_frames = Counter("heimdall_bad_frames", "frames rejected, by reason", ["receiver", "reason"], registry=r)
        self.receiver_up = Gauge("heimdall_receiver_up", "1 while the receiver delivers samples", ["receiver"], registry=r)
        self.buffer_fill = Gauge("heimdall_buffer_fill_ratio", "ring buffer fill (0..1)", ["receiver"], registry=r)
        self.clock_offset = Gauge(
            "heimdall_clock_offset_seconds",
            "receiver timestamp of a block's end minus host time at arrival",
            ["receiver"],
            registry=r,
        )
        self.last_block_age = Gauge(
            "heimdall_last_block_age_seconds", "host time since the last block arrived", ["receiver"], registry=r
        )
        self.received_power = Gauge(
            "heimdall_received_power_dbm", "in-channel received power in the last window (dBm)", ["receiver"], registry=r
        )
        self.sample_rate = Gauge("heimdall_sample_rate_hertz", "input sample rate (Hz)", ["receiver"], registry=r)
        self.receiver_reading = Gauge(
            "heimdall_receiver_reading", "adapter-specific reading (e.g. smeter_dbm)", ["receiver", "name"], registry=r
        )
        # Pipeline.
        self.windows = Counter("heimdall_windows", "analysis windows, by outcome", ["outcome"], registry=r)
        self.masked = Counter(
            "heimdall_window_masked_receivers", "receivers masked out of a window, by reason", ["receiver", "reason"], registry=r
        )
        self.feature_seconds = Histogram(
            "heimdall_feature_seconds", "channel-to-features time per window", buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.inference_seconds = Histogram(
            "heimdall_inference_seconds", "estimator time per window", ["estimator"], buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.processing_seconds = Histogram(
            "heimdall_processing_seconds",
            "window complete to localization published",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.age_seconds = Histogram(
            "heimdall_localization_age_seconds",
            "window end (receiver time) to publication (host time)",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.published = Counter("heimdall_localizations_published", "localizations sent", ["estimator"], registry=r)
        self.messages_published = Counter("heimdall_messages_published", "messages sent, by topic", ["topic"], registry=r)
        self.subscriber_drops = Counter(
            "heimdall_subscriber_drops", "messages the PUB socket refused (queue full)", ["topic"], registry=r
        )
        self.subscriptions = Gauge("heimdall_subscriptions", "active topic subscriptions on the output socket", registry=r)
        self.model_info = Info("heimdall_model", "estimator in use", registry=r)
        self.reloads = Counter("heimdall_config_reloads", "config reloads (SIGHUP), by result", ["result"], registry=r)
        self.auth_failures = Counter("heimdall_auth_failures", "peers refused in the CURVE/ZAP handshake", ["socket"], registry=r)
        self.archive_errors = Counter("heimdall_archive_errors", "messages the archive could not write", ["reason"], registry=r)
        # Band watch (a channel plan): labelled by configured channels and receivers only, never by emission.
        self.emissions_started = Counter("heimdall_emissions_started", "emissions confirmed, per channel", ["channel"],
                                         registry=r)
        self.emissions_ended = Counter("heimdall_emissions_ended", "emissions ended, per channel", ["channel"], registry=r)
        self.emissions_dropped_short = Counter(
            "heimdall_emissions_dropped_short", "candidate emissions shorter than the minimum duration, per channel",
            ["channel"], registry=r)
        self.emissions_active = Gauge("heimdall_emissions_active", "emissions on the air now, per channel", ["channel"],
                                      registry=r)
        self.emission_localizations = Counter(
            "heimdall_emission_localizations", "estimates of emissions, per channel, stage and outcome",
            ["channel", "stage", "outcome"], registry=r)
        self.channel_masked = Counter(
            "heimdall_channel_masked_windows", "windows in which a present receiver's band did not hold the channel",
            ["channel", "receiver"], registry=r)
        self.channel_lone_carrier = Counter(
            "heimdall_channel_lone_carrier_windows",
            "windows in which a receiver was left out of a channel for a carrier there that no other receiver heard",
            ["channel", "receiver"], registry=r)

    def init_receiver(self, receiver_id: str) -> None:
        """Create a receiver's series at zero so dashboards and alerts see them before the first event."""
        self.samples_received.labels(receiver_id)
        self.samples_used.labels(receiver_id)
        self.samples_buffered.labels(receiver_id)
        self.receiver_up.labels(receiver_id).set(0)
        self.buffer_fill.labels(receiver_id)
        self.clock_offset.labels(receiver_id)
        self.last_block_age.labels(receiver_id)
        self.received_power.labels(receiver_id)
        self.sample_rate.labels(receiver_id)

    def init_channel(self, channel: str, receiver_ids=()) -> None:
        """Create a band channel's series at zero (its masked counters for each receiver in ``receiver_ids``)."""
        self.emissions_started.labels(channel)
        self.emissions_ended.labels(channel)
        self.emissions_dropped_short.labels(channel)
        self.emissions_active.labels(channel).set(0)
        for stage in ("interim", "final"):
            self.emission_localizations.labels(channel, stage, "localized")
        for receiver_id in receiver_ids:
            self.channel_masked.labels(channel, receiver_id)
            self.channel_lone_carrier.labels(channel, receiver_id)

    #: Per-receiver gauges: a state, which a removed receiver no longer has (its counters stay: they are totals).
    RECEIVER_GAUGES = ("samples_buffered", "receiver_up", "buffer_fill", "clock_offset", "last_block_age",
                       "received_power", "sample_rate")

    def forget_receiver(self, receiver_id: str, reading_names=()) -> None:
        """Remove a receiver's gauges (a reload removed it): a stale ``receiver_up 1`` would say it still runs."""
        for name in self.RECEIVER_GAUGES:
            try:
                getattr(self, name).remove(receiver_id)
            except KeyError:  # never set
                pass
        for reading in reading_names:
            try:
                self.receiver_reading.remove(receiver_id, reading)
            except KeyError:
                pass


class AdapterCounters:
    """``Metrics`` seen through the ``DropCounter`` protocol of receivers/base.py, for adapters.

    What an adapter drops never reached the pipeline, so it is counted with ``stage="source"``.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self.reading_names: dict[str, set[str]] = {}  # receiver -> reading names set, to remove them with the receiver

    def bad_frame(self, receiver_id: str, reason: str) -> None:
        self._m.bad_frames.labels(receiver_id, reason).inc()

    def samples_dropped(self, receiver_id: str, reason: str, n: int) -> None:
        if n > 0:
            self._m.samples_dropped.labels(receiver_id, reason, "source").inc(n)

    def gauge(self, receiver_id: str, name: str, value: float) -> None:
        self.reading_names.setdefault(receiver_id, set()).add(name)
        self._m.receiver_reading.labels(receiver_id, name).set(value)
