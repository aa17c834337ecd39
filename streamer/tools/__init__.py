"""Operator and developer commands built on the daemon's parts (calibrate, calibrate-ellipses, record, soak,
bench). Nothing in the daemon imports them."""
