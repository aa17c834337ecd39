"""``heimdall check``: the verdict on a config without running it: the checks ``heimdall run`` makes before it
starts, its model loaded against the contract, the ports it would bind, which receivers cover which channels of
the channel plan; or, with ``--receiver ID``, the checks
``heimdall receiver ID`` makes on an edge host."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall check``."""
    parser.add_argument("-c", "--config", help="TOML config (default: the embedded config/default.toml)")
    parser.add_argument("--receiver", metavar="ID",
                        help="check the config as `heimdall receiver ID` on an edge host uses it (not as a daemon's)")
    parser.add_argument("--channelize", action="store_true",
                        help="with --receiver: as `heimdall receiver ID --channelize` uses it")


def run(args: argparse.Namespace) -> int:
    """Print the verdict and any warnings; exit status 0 (a refusal raises ``HeimdallError``)."""
    from streamer import config as config_mod
    from streamer.core.errors import HeimdallError
    from streamer.daemon.coverage import channel_coverage, coverage_lines
    from streamer.daemon.preflight import busy_port_notes, preflight, provider_summary
    from streamer.dsp.frame_fft import fft_summary
    from streamer.estimators.build import build_estimators

    if args.channelize and args.receiver is None:
        raise HeimdallError("heimdall check: --channelize checks an edge's config: expected --receiver ID with it")
    cfg = config_mod.load(args.config)
    if args.receiver is not None:
        from streamer.daemon.preflight import preflight_edge

        notes = preflight_edge(cfg, args.receiver, channelize=args.channelize)
        rx = cfg.receiver(args.receiver)
        how = f" --channelize ({cfg.network.target_freq_hz:.9g} Hz at {cfg.features.sample_rate_hz:.9g} Hz)" if args.channelize else ""
        print(f"{cfg.source}: ok for heimdall receiver {rx.id}{how} (kind {rx.kind})")
        for note in notes:
            print(f"warning: {note}")
        return 0
    notes = preflight(cfg) + busy_port_notes(cfg)  # the checks `heimdall run` makes before it starts, and its ports now
    estimators = build_estimators(cfg)  # loads and checks the model against the contract, if one is named
    print(f"{cfg.source}: ok ({len(cfg.receivers)} receivers, estimator {cfg.estimator.kind})")
    for estimator in estimators:
        if hasattr(estimator, "site_summary"):
            print(f"model {estimator.info['name']} {estimator.info['version']}: {estimator.site_summary()}")
    if cfg.estimator.kind == "onnx":
        print(provider_summary(cfg, running=estimators[0].provider))
    print(fft_summary(cfg.pipeline.fft))
    for line in coverage_lines(channel_coverage(cfg)):  # which receivers' bands hold which channels of the plan
        print(line)
    for note in notes:
        print(f"warning: {note}")
    return 0
