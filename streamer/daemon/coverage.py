"""Channel coverage: which receivers' tuned bands hold which channels of the channel plan.

A receiver *covers* a channel when the whole channel, ``centre_hz ± bandwidth_hz / 2``, lies inside the band
it receives, ``centre ± sample_rate / 2`` (Hz; the band its adapter's ``configured_band_hz()`` gives, or each
capture of a SigMF recording, any one of which suffices). A channel outside a receiver's band is *masked* for that
receiver: the receiver never counts towards that channel's emissions or localizations. A receiver whose band only
its stream tells (framed ZeroMQ, GNU Radio) is *unknown* here.

``preflight`` turns this into a verdict for a config with a channel plan (``[[channels]]`` or ``[band]``): an error
when a channel is covered by fewer than ``pipeline.min_receivers`` receivers even counting the unknown ones (it
could never be localized), a warning naming each receiver that misses some channels. ``heimdall check`` prints
``coverage_lines``.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer.config import ChannelConfig, Config, ReceiverConfig

#: Most channel names listed in one warning; the rest are counted.
LISTED_CHANNELS = 6
#: How far past the band's edge a channel's edge may reach and still count as inside (Hz): float rounding only.
EDGE_TOLERANCE_HZ = 1e-3


@dataclass(frozen=True)
class ChannelCoverage:
    """One channel of the plan and the receiver ids (config order) that cover it, miss it, or cannot tell yet."""

    channel: ChannelConfig
    covered_by: tuple[str, ...]
    masked_for: tuple[str, ...]
    unknown: tuple[str, ...]


def channel_in_band(channel_centre_hz: float, channel_bandwidth_hz: float, band_centre_hz: float, sample_rate_hz: float) -> bool:
    """Whether the channel ``centre ± bandwidth/2`` lies inside the band received at ``band_centre_hz ±
    sample_rate_hz/2`` (all Hz, to a millihertz: the rule ``streamer.dsp.filterbank.covered_channels`` applies
    without a guard band).

    >>> channel_in_band(145.5e6, 12_500.0, 145.45e6, 240_000.0), channel_in_band(145.57e6, 12_500.0, 145.45e6, 240_000.0)
    (True, False)
    """
    return abs(channel_centre_hz - band_centre_hz) + channel_bandwidth_hz / 2 <= sample_rate_hz / 2 + EDGE_TOLERANCE_HZ


def receiver_bands(config: Config, rx: ReceiverConfig) -> list[tuple[float, float]] | None:
    """(centre Hz, sample rate Hz) of each band the config fixes for ``rx``; None when only its stream tells."""
    from receivers.registry import adapter_class

    if rx.kind == "sigmf":
        return recorded_bands(rx, config) or None
    configured = getattr(adapter_class(rx.kind), "configured_band_hz", None)
    return None if configured is None else [configured(rx.options, config)]


def channel_coverage(config: Config) -> list[ChannelCoverage]:
    """Coverage of every channel of ``config.channel_plan()``, in plan order."""
    bands = {rx.id: receiver_bands(config, rx) for rx in config.receivers}
    out = []
    for ch in config.channel_plan():
        covered, masked, unknown = [], [], []
        for rx_id, rx_bands in bands.items():
            if rx_bands is None:
                unknown.append(rx_id)
            elif any(channel_in_band(ch.centre_hz, ch.bandwidth_hz, centre, rate) for centre, rate in rx_bands):
                covered.append(rx_id)
            else:
                masked.append(rx_id)
        out.append(ChannelCoverage(ch, tuple(covered), tuple(masked), tuple(unknown)))
    return out


def coverage_verdict(config: Config, coverage: list[ChannelCoverage]) -> list[str]:
    """Raise ``ConfigError`` for a channel fewer than ``pipeline.min_receivers`` can cover; return a warning per
    receiver that misses some channels (they are masked for it)."""
    from streamer.core.errors import ConfigError

    need = config.pipeline.min_receivers
    short = [(i, c) for i, c in enumerate(coverage) if len(c.covered_by) + len(c.unknown) < need]
    if short:
        i, c = short[0]
        key = f"channels[{i}]" if config.channels else "band" if config.band is not None else "network.target_freq_hz"
        more = len(short) - 1
        others = f" (and {more} more channel{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(
            f"{config.source}: {key}: channel {c.channel.name!r} ({_span(c.channel)}) lies inside the band of "
            f"{len(c.covered_by)} receivers ({', '.join(c.covered_by) or 'none'}){others}; expected at least "
            f"pipeline.min_receivers = {need}: it could never be localized. Receivers' bands: {_bands_text(config)}"
        )
    notes = []
    for i, rx in enumerate(config.receivers):
        missed = [c.channel.name for c in coverage if rx.id in c.masked_for]
        if missed:
            listed = ", ".join(missed[:LISTED_CHANNELS]) + (f" and {len(missed) - LISTED_CHANNELS} more" if len(missed) > LISTED_CHANNELS else "")
            notes.append(f"{config.source}: receivers[{i}] (id {rx.id!r}, kind {rx.kind!r}): channels outside its band, "
                         f"{len(missed)} of {len(coverage)} ({listed}): masked for this receiver")
    return notes


def centre_in_channel_notes(config: Config) -> list[str]:
    """A warning per receiver tuned to a frequency inside a watched channel (``config.channel_plan()``, the one-channel
    form included): most SDRs leave a DC offset at their centre frequency, which reads as a carrier in that channel at
    that receiver alone. A simulated receiver has one only when its ``dc_offset_db`` is set."""
    notes, plan = [], config.channel_plan()
    for i, rx in enumerate(config.receivers):
        if rx.kind == "simulator" and getattr(rx.options, "dc_offset_db", None) is None:
            continue
        for centre, _rate in receiver_bands(config, rx) or ():
            inside = [ch for ch in plan if abs(ch.centre_hz - centre) < ch.bandwidth_hz / 2]
            for ch in inside:
                notes.append(f"{config.source}: receivers[{i}] (id {rx.id!r}, kind {rx.kind!r}): tuned to {centre:.9g} Hz,"
                             f" inside channel {ch.name!r} ({_span(ch)}): an SDR's DC offset at its centre frequency reads"
                             f" as a carrier there; tune it so that its centre lies outside every channel")
    return notes


def coverage_lines(coverage: list[ChannelCoverage]) -> list[str]:
    """What ``heimdall check`` prints: neighbouring channels with the same receivers on one line, then the count of
    masked (channel, receiver) pairs."""
    lines = []
    groups: list[list[ChannelCoverage]] = []
    for c in coverage:
        if groups and (groups[-1][0].covered_by, groups[-1][0].masked_for) == (c.covered_by, c.masked_for):
            groups[-1].append(c)
        else:
            groups.append([c])
    for group in groups:
        first, last = group[0], group[-1]
        names = first.channel.name if len(group) == 1 else f"{first.channel.name} .. {last.channel.name} ({len(group)})"
        text = f"channel {names}: covered by {len(first.covered_by)} ({', '.join(first.covered_by) or 'none'})"
        if first.masked_for:
            text += f"; masked for {len(first.masked_for)} ({', '.join(first.masked_for)})"
        if first.unknown:
            text += f"; band known only from the stream: {', '.join(first.unknown)}"
        lines.append(text)
    masked = sum(len(c.masked_for) for c in coverage)
    receivers = len(coverage[0].covered_by) + len(coverage[0].masked_for) + len(coverage[0].unknown) if coverage else 0
    lines.append(f"coverage: {len(coverage)} channels x {receivers} receivers; masked (channel, receiver) pairs: {masked}")
    return lines


def recorded_bands(rx, config: Config) -> list[tuple[float, float]] | None:
    """(centre, rate) of each capture of a ``kind = "sigmf"`` receiver's recording, from its metadata (the data file's
    checksum is not verified here); None when it does not open: ``heimdall run`` reports that receiver by name."""
    import dataclasses
    from pathlib import Path

    import sigmf

    from receivers import sigmf_file
    from streamer.core.errors import ReceiverError

    path = Path(rx.options.path).expanduser()
    if not path.is_absolute() and Path(config.source).is_file():  # as SigmfReceiver.from_config resolves it
        path = Path(config.source).parent / path
    try:
        recording, meta_path = sigmf_file.open_stream(path, rx.id, dataclasses.replace(rx.options, verify_checksum=False))
        rate = float(recording.get_global_field(sigmf.SAMPLE_RATE_KEY))
        segments = sigmf_file.plan_segments(recording, meta_path, rate)
    except ReceiverError:
        return None
    return sorted({(segment.center_freq, rate) for segment in segments})


def _span(channel: ChannelConfig) -> str:
    return f"{channel.centre_hz:.0f} Hz ± {channel.bandwidth_hz / 2:g} Hz"


def _bands_text(config: Config) -> str:
    parts = []
    for rx in config.receivers:
        bands = receiver_bands(config, rx)
        if bands is None:
            parts.append(f"{rx.id} unknown")
        else:
            parts.append(f"{rx.id} " + ", ".join(f"{(c - r / 2) / 1e6:.6f}-{(c + r / 2) / 1e6:.6f} MHz" for c, r in bands))
    return "; ".join(parts)
