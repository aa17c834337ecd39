"""The ``heimdall`` commands (streamer.cli's table names each one's module) and the tools behind them: run, check,
listen, the edge receiver, keys, kinds, calibrate, calibrate-ellipses, record, soak and the benches, built on the
daemon's parts. Nothing in the daemon imports them."""
