"""Signal processing shared by the daemon, the estimators and the trainer: channelizer, mel features and the
one detection rule (in-channel power, noise and the heard decision)."""
