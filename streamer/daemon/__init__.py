"""The always-on daemon: app wires receivers, lanes, pipeline, publisher, archive and metrics; runner, lane,
ringbuffer and aligner move samples into aligned windows; pipeline turns windows into published estimates."""
