#!/usr/bin/python3
"""Example GNU Radio flowgraph feeding Heimdall: an NBFM test signal published on a gr-zeromq sink.

Replace the signal source with your radio's source block (osmocom/UHD/Soapy sources emit rx_time,
rx_rate and rx_freq tags themselves) and keep the zeromq sink with pass_tags on: the tag header's item
offset is the only way the daemon can see samples the sink dropped.

Run with the system Python (GNU Radio does not import inside a virtual environment with numpy 2)::

    /usr/bin/python3 config/examples/gnuradio_source.py --endpoint tcp://127.0.0.1:5555 --sink push

then ``heimdall run -c config/examples/gnuradio.toml``. With ``--items N`` it sends exactly N items whose
first item carries rx_rate, rx_freq and rx_time tags (host clock), prints ``done`` and keeps the socket
open until stdin closes; without it, it streams untagged items until Ctrl-C (the daemon then takes the
rate and frequency from its config).
"""

import argparse
import sys
import time

import numpy as np
import pmt
from gnuradio import analog, blocks, gr, zeromq

DEVIATION_HZ = 2500.0
TONE_HZ = 1000.0


def nbfm(n, rate_hz, offset_hz):
    """n samples of a 1 kHz tone FM-modulated at 2.5 kHz deviation, offset from the centre, plus noise."""
    t = np.arange(n) / rate_hz
    phase = 2 * np.pi * offset_hz * t + (DEVIATION_HZ / TONE_HZ) * np.sin(2 * np.pi * TONE_HZ * t)
    noise = (np.random.default_rng(1).standard_normal((n, 2)) @ [1, 1j]) * 1e-4
    return (0.01 * np.exp(1j * phase) + noise).astype(np.complex64)


def start_tags(rate_hz, center_freq_hz):
    now = time.time()
    rx_time = pmt.make_tuple(pmt.from_uint64(int(now)), pmt.from_double(now - int(now)))
    tags = []
    for key, value in (("rx_rate", pmt.from_double(rate_hz)), ("rx_freq", pmt.from_double(center_freq_hz)),
                       ("rx_time", rx_time)):
        tag = gr.tag_t()
        tag.offset, tag.key, tag.value, tag.srcid = 0, pmt.intern(key), value, pmt.intern("example")
        tags.append(tag)
    return tags


class NbfmTestSource(gr.top_block):
    def __init__(self, endpoint, sink, rate_hz, center_freq_hz, offset_hz, items):
        gr.top_block.__init__(self, "heimdall_nbfm_test_source")
        if items:
            source = blocks.vector_source_c(nbfm(items, rate_hz, offset_hz).tolist(), False, 1,
                                            start_tags(rate_hz, center_freq_hz))
        else:
            tone = analog.sig_source_f(rate_hz, analog.GR_SIN_WAVE, TONE_HZ, 1.0)
            fm = analog.frequency_modulator_fc(2 * np.pi * DEVIATION_HZ / rate_hz)
            carrier = analog.sig_source_c(rate_hz, analog.GR_COS_WAVE, offset_hz, 0.01)
            source = blocks.multiply_cc()
            self.connect(tone, fm, (source, 0))
            self.connect(carrier, (source, 1))
        throttle = blocks.throttle(gr.sizeof_gr_complex, rate_hz)
        make_sink = zeromq.push_sink if sink == "push" else zeromq.pub_sink
        self.connect(source, throttle, make_sink(gr.sizeof_gr_complex, 1, endpoint, 100, True, -1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    p.add_argument("--sink", choices=["push", "pub"], default="push")
    p.add_argument("--rate", type=float, default=240e3, help="sample rate (Hz)")
    p.add_argument("--freq", type=float, default=145.45e6, help="centre frequency in the rx_freq tag (Hz)")
    p.add_argument("--offset", type=float, default=50e3, help="signal offset from the centre (Hz)")
    p.add_argument("--items", type=int, default=0, help="send exactly this many tagged items (0 = stream until Ctrl-C)")
    args = p.parse_args()
    tb = NbfmTestSource(args.endpoint, args.sink, args.rate, args.freq, args.offset, args.items)
    tb.start()
    print("started", flush=True)
    try:
        tb.wait()
        print("done", flush=True)
        sys.stdin.read()  # keep the sink's socket open until the caller closes stdin
    except KeyboardInterrupt:
        pass
    finally:
        tb.stop()
        tb.wait()


if __name__ == "__main__":
    main()
