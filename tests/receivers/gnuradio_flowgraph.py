"""A real GNU Radio flowgraph feeding a gr-zeromq sink, for tests/receivers/test_gnuradio_zmq.py.

Run with the system interpreter (GNU Radio does not import in the venv)::

    /usr/bin/python3 tests/receivers/gnuradio_flowgraph.py --sink push --items 50000 --tags

Protocol on stdio (the test drives it, no sleeps):

1. The sink binds an ephemeral port; the script prints ``endpoint tcp://127.0.0.1:PORT``.
2. ``--sink push``: vector_source(payload, repeat, tags) -> head(items) -> push_sink starts at once: a
   PUSH sink holds its data until a PULL peer connects, so nothing is lost.
   ``--sink pub``: a PUB sink drops whatever it sends before a subscription arrives, so the source first
   emits PROBE items (one per ~20 ms) until the test, having *received* a probe, writes ``go`` on
   stdin; then it emits exactly ``items`` payload items and ends.
3. When the flowgraph has finished the script prints ``done`` and keeps the sink's socket open until
   stdin closes, so the last messages still go out.

Payload item k is ``complex(k % 1000, k // 1000)`` (exact in float32; ``payload()`` in the test must
match). With ``--tags`` the first payload item carries rx_rate, rx_freq and rx_time, and item
``items // 2`` carries a new rx_freq (values in ``TAGS``).

``--sink push`` only: ``--vlen V`` sends the payload as complex vectors of V (``items`` samples, tag
offsets counting vectors, as GNU Radio's do); ``--float`` sends the payload's real parts as float32 items
(a stream a complex receiver must refuse); ``--throttle RATE`` paces it at RATE items/s, as a radio would.
"""

import argparse
import sys
import threading

import numpy as np
import pmt
from gnuradio import blocks, gr, zeromq

PROBE = complex(-1.0, -1.0)
RATE_HZ = 250e3
FREQ_HZ = 433.92e6
RETUNE_HZ = 434.0e6
RX_TIME = (1_700_000_000, 0.25)


def payload(n):
    k = np.arange(n)
    return (k % 1000 + 1j * (k // 1000)).astype(np.complex64)


def tags_at(first, n):
    """(absolute offset, key, value) of the stream tags, the first payload item being at ``first``."""
    secs, frac = RX_TIME
    rx_time = pmt.make_tuple(pmt.from_uint64(secs), pmt.from_double(frac))
    return [
        (first, "rx_rate", pmt.from_double(RATE_HZ)),
        (first, "rx_freq", pmt.from_double(FREQ_HZ)),
        (first, "rx_time", rx_time),
        (first + n // 2, "rx_freq", pmt.from_double(RETUNE_HZ)),
    ]


def make_tag(offset, key, value):
    tag = gr.tag_t()
    tag.offset, tag.key, tag.value, tag.srcid = offset, pmt.intern(key), value, pmt.intern("test_flowgraph")
    return tag


class GatedSource(gr.sync_block):
    """Probe items until ``go`` is set, then the payload (with tags), then done."""

    def __init__(self, n, with_tags, go):
        gr.sync_block.__init__(self, "gated_source", [], [np.complex64])
        self.data, self.with_tags, self.go = payload(n), with_tags, go
        self.sent = 0
        self.first = None

    def work(self, input_items, output_items):
        out = output_items[0]
        if not self.go.is_set():
            self.go.wait(0.02)
            out[0] = PROBE
            return 1
        if self.first is None:
            self.first = self.nitems_written(0)
        if self.sent == len(self.data):
            return -1  # WORK_DONE
        count = min(len(out), len(self.data) - self.sent)
        out[:count] = self.data[self.sent : self.sent + count]
        if self.with_tags:
            start = self.nitems_written(0)
            for offset, key, value in tags_at(self.first, len(self.data)):
                if start <= offset < start + count:
                    self.add_item_tag(0, offset, pmt.intern(key), value, pmt.intern("test_flowgraph"))
        self.sent += count
        return count


def build(args, go):
    tb = gr.top_block("heimdall_test")
    if args.sink == "push":
        vlen = args.vlen
        tags = [make_tag(offset // vlen, key, value) for offset, key, value in tags_at(0, args.items)] if args.tags else []
        if args.float:
            source = blocks.vector_source_f(payload(args.items).real.tolist(), True, 1, tags)
            itemsize = gr.sizeof_float
        else:
            source = blocks.vector_source_c(payload(args.items).tolist(), True, vlen, tags)
            itemsize = gr.sizeof_gr_complex
        head = blocks.head(itemsize * vlen, args.items // vlen)
        sink = zeromq.push_sink(itemsize, vlen, "tcp://127.0.0.1:*", 100, args.tags)
        if args.throttle:
            throttle = blocks.throttle(itemsize * vlen, args.throttle / vlen)
            tb.connect(source, throttle, head, sink)
            tb.keep_alive_throttle = throttle
        else:
            tb.connect(source, head, sink)
    else:
        source = GatedSource(args.items, args.tags, go)
        sink = zeromq.pub_sink(gr.sizeof_gr_complex, 1, "tcp://127.0.0.1:*", 100, args.tags, -1, args.key)
        tb.connect(source, sink)
    tb.keep_alive = source  # a Python block must outlive build(): the scheduler calls back into it
    return tb, sink


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sink", choices=("pub", "push"), required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--tags", action="store_true", help="pass_tags on the sink, rx_* tags on the payload")
    parser.add_argument("--key", default="", help="pub_sink key (frames become [key][data])")
    parser.add_argument("--vlen", type=int, default=1, help="push only: complex vectors of this length")
    parser.add_argument("--float", action="store_true", help="push only: float32 items instead of complex")
    parser.add_argument("--throttle", type=float, default=0.0, help="push only: pace the items at this rate (items/s)")
    args = parser.parse_args()
    go = threading.Event()
    tb, sink = build(args, go)
    print("endpoint", sink.last_endpoint(), flush=True)
    tb.start()
    if args.sink == "pub":
        for line in sys.stdin:
            if line.strip() == "go":
                go.set()
                break
        else:  # stdin closed before "go": the test gave up
            tb.stop()
    tb.wait()
    print("done", flush=True)
    sys.stdin.read()  # keep the socket open until the test closes stdin


if __name__ == "__main__":
    main()
