"""The ``heimdall`` commands (streamer.cli's table names each one's module) and the tools behind them:
calibration, recording, soak, benchmarks, built on the daemon's parts. Nothing in the daemon imports them."""
