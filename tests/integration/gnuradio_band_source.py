#!/usr/bin/python3
"""GNU Radio flowgraph for tests/integration/test_band_peers.py: keyed tones on several channels of a band,
published as tagged complex64 streams on gr-zeromq PUB sinks, one sink per simulated receiver site.

Run with the system Python (GNU Radio does not import inside the project's virtual environment)::

    /usr/bin/python3 tests/integration/gnuradio_band_source.py SPEC.json

SPEC.json::

    {"duration_s": 8.0,
     "keying_rate_hz": 1000.0,
     "streams": [{"endpoint": "tcp://127.0.0.1:5601", "rate_hz": 2.4e6, "freq_hz": 145.5e6,
                  "noise_amplitude": 0.01, "gain_db": 0.0}, ...],
     "bursts": [{"freq_hz": 145.4625e6, "start_s": 2.0, "stop_s": 3.0, "amplitude": 0.003}, ...]}

Every stream carries every burst: a complex tone at the burst's frequency (offset from the stream's
``freq_hz``), of ``amplitude`` (full scale) times ``gain_db``, keyed on from ``start_s`` to ``stop_s`` (seconds
from item 0, on the keying grid of ``1/keying_rate_hz`` s), plus complex Gaussian noise of ``noise_amplitude``.
A burst with ``deviation_hz`` and ``tone_hz`` is NBFM instead: its carrier frequency-modulated by a ``tone_hz``
sine at ``deviation_hz`` peak deviation (the same power).
Item 0 of every stream carries ``rx_rate``, ``rx_freq`` (Hz) and ``rx_time`` (the host clock when the flowgraph
starts) tags. The keying envelope, at ``keying_rate_hz``, is the one throttled source: every stream is paced by
it, so all of them run in real time together. Each stream stops after exactly ``duration_s * rate_hz`` items.

Prints ``started T0_NS`` (the ``rx_time`` of item 0, Unix ns) once running and ``done`` when every item has been handed to the sinks, then keeps the
sockets open until stdin closes.
"""

import json
import sys
import time

import numpy as np

# GNU Radio is imported where the flowgraph is built, so that the project's own interpreter (pytest's doctest
# collection walks tests/) can import this file without it.


def start_tags(rate_hz, freq_hz, t0_s):
    """``rx_rate``, ``rx_freq`` (Hz) and ``rx_time`` (``t0_s``, Unix s) tags on item 0."""
    import pmt
    from gnuradio import gr

    rx_time = pmt.make_tuple(pmt.from_uint64(int(t0_s)), pmt.from_double(t0_s - int(t0_s)))
    tags = []
    for key, value in (("rx_rate", pmt.from_double(rate_hz)), ("rx_freq", pmt.from_double(freq_hz)),
                       ("rx_time", rx_time)):
        tag = gr.tag_t()
        tag.offset, tag.key, tag.value, tag.srcid = 0, pmt.intern(key), value, pmt.intern("heimdall_test")
        tags.append(tag)
    return tags


def keying(burst, keying_rate_hz, n_keys):
    """The burst's on/off envelope (1.0 while keyed) at the keying rate."""
    key_times_s = np.arange(n_keys) / keying_rate_hz
    return ((key_times_s >= burst["start_s"]) & (key_times_s < burst["stop_s"])).astype(np.float32)


def band_test_source(spec, t0_s):
    """The flowgraph of ``spec`` (module docstring), not started."""
    from gnuradio import analog, blocks, gr, zeromq

    tb = gr.top_block("heimdall_band_test_source")
    keying_rate_hz = float(spec["keying_rate_hz"])
    n_keys = round(spec["duration_s"] * keying_rate_hz)
    zeros = np.zeros(n_keys, np.complex64).tolist()
    clock = blocks.throttle(gr.sizeof_gr_complex, keying_rate_hz)
    tb.connect(blocks.vector_source_c(zeros, False), clock)
    for seed, stream in enumerate(spec["streams"], start=1):
        rate_hz = float(stream["rate_hz"])
        per_key = round(rate_hz / keying_rate_hz)
        # The throttled clock's zeros carry the pace, a second source of zeros the start tags (offset 0 stays
        # 0 through the repeat); the noise and the keyed tones are added to them.
        stamp = blocks.add_cc()
        tb.connect(clock, (stamp, 0))
        tb.connect(blocks.vector_source_c(zeros, False, 1, start_tags(rate_hz, stream["freq_hz"], t0_s)), (stamp, 1))
        pace = blocks.repeat(gr.sizeof_gr_complex, per_key)
        total = blocks.add_cc()
        tb.connect(stamp, pace, (total, 0))
        tb.connect(analog.noise_source_c(analog.GR_GAUSSIAN, float(stream["noise_amplitude"]), seed), (total, 1))
        gain = 10 ** (float(stream.get("gain_db", 0.0)) / 20)
        for port, burst in enumerate(spec["bursts"], start=2):
            envelope = blocks.vector_source_f(keying(burst, keying_rate_hz, n_keys).tolist(), False)
            envelope_c = blocks.float_to_complex()
            hold = blocks.repeat(gr.sizeof_gr_complex, per_key)
            carrier = analog.sig_source_c(rate_hz, analog.GR_COS_WAVE, burst["freq_hz"] - stream["freq_hz"],
                                          burst["amplitude"] * gain)
            keyed = blocks.multiply_cc()
            tb.connect(envelope, envelope_c, hold, (keyed, 0))
            if "deviation_hz" in burst:  # NBFM: the carrier frequency-modulated by a tone
                modulating = analog.sig_source_f(rate_hz, analog.GR_SIN_WAVE, float(burst["tone_hz"]), 1.0)
                fm = analog.frequency_modulator_fc(2 * np.pi * float(burst["deviation_hz"]) / rate_hz)
                modulated = blocks.multiply_cc()
                tb.connect(modulating, fm, (modulated, 0))
                tb.connect(carrier, (modulated, 1))
                carrier = modulated
            tb.connect(carrier, (keyed, 1))
            tb.connect(keyed, (total, port))
        head = blocks.head(gr.sizeof_gr_complex, per_key * n_keys)
        sink = zeromq.pub_sink(gr.sizeof_gr_complex, 1, stream["endpoint"], 100, True, -1)
        tb.connect(total, head, sink)
    return tb


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    t0_ns = time.time_ns()
    tb = band_test_source(spec, t0_ns / 1e9)
    tb.start()
    print(f"started {t0_ns}", flush=True)
    try:
        tb.wait()
        print("done", flush=True)
        sys.stdin.read()  # keep the sinks' sockets open until the caller closes stdin
    finally:
        tb.stop()
        tb.wait()


if __name__ == "__main__":
    main()
