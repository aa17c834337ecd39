"""``python -m streamer``: the ``heimdall`` command line (streamer.cli)."""

from streamer.cli import main

raise SystemExit(main())
