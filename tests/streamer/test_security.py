"""streamer.core.security and the limits on framed-IQ ingest, over real ZeroMQ sockets on 127.0.0.1.

Covers: key files (generate, load, refuse), CURVE on the output XPUB and on ingest with ZAP allow-lists
(a peer with the right key works, one without is refused and counted), ZMQ_MAXMSGSIZE and the
per-receiver rate limit, and the loopback checks behind the exposure warnings.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from receivers.base import Flags, IQBlock, TallyDropCounter
from receivers.framing import encode
from receivers.zmq_framed import FramedPublisher, Options, RateLimit, ZmqFramedReceiver
from streamer.core import security
from streamer.core.errors import ConfigError, ReceiverTransientError
from streamer.daemon.publish import ZmqPublisher
from tests.helpers.collect import Collector

TIMEOUT_S = 5.0
RATE = 100_000.0
T0 = 1_700_000_000_000_000_000


def block(index: int, n: int = 1000, rid: str = "rx1") -> IQBlock:
    samples = np.full(n, 0.1 + 0.1j, np.complex64)
    return IQBlock(rid, samples, index, T0 + round(index * 1e9 / RATE), "gps", RATE, 145.5e6, 10.0)


def wait_until(condition, timeout_s: float = TIMEOUT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def keys(tmp_path):
    """server, two allowed clients, one stranger; allow-list folders for output and ingest."""
    out = {}
    (tmp_path / "allowed").mkdir()
    for name in ("server", "stranger"):
        out[name] = security.generate_keys(tmp_path / "own", name)
    for name in ("client", "edge"):
        out[name] = security.generate_keys(tmp_path / "own", name)
        os.link(out[name][0], tmp_path / "allowed" / f"{name}.key")
    out["allowed"] = tmp_path / "allowed"
    return out


def pair(keys, name) -> security.KeyPair:
    return security.load_secret_key(keys[name][1], key="test")


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


# Key files ---------------------------------------------------------------------------------------------
def test_generate_writes_a_public_and_a_private_secret_file_in_zmq_auth_format(tmp_path):
    public, secret = security.generate_keys(tmp_path / "keys", "daemon")
    assert (public.name, secret.name) == ("daemon.key", "daemon.key_secret")
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert oct(public.stat().st_mode & 0o777) == "0o644"
    pub, sec = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (pub, None) and len(sec) == 40
    assert list((tmp_path / "keys").iterdir()) == [public, secret] or set((tmp_path / "keys").iterdir()) == {public, secret}


def test_generate_refuses_to_overwrite_and_odd_names(tmp_path):
    security.generate_keys(tmp_path, "a")
    with pytest.raises(ConfigError, match="already exists"):
        security.generate_keys(tmp_path, "a")
    with pytest.raises(ConfigError, match="plain file name"):
        security.generate_keys(tmp_path, "../a")


def test_cli_keys_generate(tmp_path, capsys):
    from streamer.cli import main

    assert main(["keys", "generate", str(tmp_path), "--name", "edge1"]) == 0
    assert (tmp_path / "edge1.key").is_file() and (tmp_path / "edge1.key_secret").stat().st_mode & 0o077 == 0
    assert "edge1.key_secret" in capsys.readouterr().out


def test_missing_secret_key_names_the_key_path_and_the_file(tmp_path):
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(ConfigError) as err:
        security.load_secret_key(missing, key="site.toml: security.secret_key")
    assert "site.toml: security.secret_key" in str(err.value) and str(missing) in str(err.value)
    with pytest.raises(ConfigError, match="security.secret_key: required"):
        security.load_secret_key(None, key="security.secret_key")


def test_secret_key_readable_by_others_is_refused_with_the_fix(tmp_path):
    _, secret = security.generate_keys(tmp_path, "loose")
    secret.chmod(0o640)
    with pytest.raises(ConfigError) as err:
        security.load_secret_key(secret, key="security.secret_key")
    assert f"chmod 600 {secret}" in str(err.value) and "0640" in str(err.value)
    secret.chmod(0o600)
    assert security.load_secret_key(secret, key="security.secret_key").path == secret


def test_public_file_given_as_secret_and_garbage_are_refused(tmp_path):
    public, _ = security.generate_keys(tmp_path, "x")
    public.chmod(0o600)
    with pytest.raises(ConfigError, match="no secret-key"):
        security.load_secret_key(public, key="security.secret_key")
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("hello\n")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match="not a ZeroMQ certificate"):
        security.load_secret_key(garbage, key="security.secret_key")
    bad = tmp_path / "short.key"
    bad.write_text('curve\n    public-key = "tooshort"\n')
    with pytest.raises(ConfigError, match="40-character Z85"):
        security.load_public_key(bad, key="security.server_key")


def test_allow_list_must_exist_and_hold_keys(tmp_path, keys):
    assert len(security.load_allow_list(keys["allowed"], key="k")) == 2
    with pytest.raises(ConfigError, match="does not exist"):
        security.load_allow_list(tmp_path / "nowhere", key="security.output_clients_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no \\*.key files: every client would be refused"):
        security.load_allow_list(tmp_path / "empty", key="security.output_clients_dir")
    (keys["allowed"] / "broken.key").write_text("nothing here\n")
    with pytest.raises(ConfigError, match="broken.key"):
        security.load_allow_list(keys["allowed"], key="security.output_clients_dir")


# Exposure ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "endpoint, loopback",
    [("tcp://127.0.0.1:5557", True), ("tcp://localhost:1", True), ("tcp://[::1]:1", True), ("ipc:///run/x", True),
     ("tcp://0.0.0.0:5557", False), ("tcp://*:5557", False), ("tcp://192.168.1.4:5557", False), ("tcp://eth0:1", False)],
)
def test_loopback_endpoints(endpoint, loopback):
    assert security.is_loopback_endpoint(endpoint) is loopback


def test_exposed_bind_without_curve_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="streamer.core.security"):
        assert security.warn_if_exposed("output.endpoint", "tcp://0.0.0.0:5557", curve=False)
        assert not security.warn_if_exposed("output.endpoint", "tcp://0.0.0.0:5557", curve=True)
        assert not security.warn_if_exposed("output.endpoint", "tcp://127.0.0.1:5557", curve=False)
    assert [r.getMessage() for r in caplog.records if "not loopback" in r.getMessage()] != []
    assert len(caplog.records) == 1


def test_defaults_are_loopback_and_curve_off():
    from streamer.config import Config

    cfg = Config()
    assert security.is_loopback_endpoint(cfg.output.endpoint) and security.is_loopback_host(cfg.metrics.host)
    assert not cfg.security.curve_output and not cfg.security.curve_ingest and cfg.output.archive.dir is None


# CURVE on the output socket --------------------------------------------------------------------------------
def subscriber(ctx, endpoint, client: security.KeyPair | None, server_key: bytes | None):
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    if client is not None:
        security.make_curve_client(sock, client, server_key)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def test_output_admits_an_allowed_subscriber_and_refuses_and_counts_the_others(context, keys):
    auth = security.CurveAuthenticator(context)
    refused: list[str] = []
    try:
        auth.allow(security.OUTPUT_DOMAIN, keys["allowed"], key="security.output_clients_dir")
        server = pair(keys, "server")
        pub = ZmqPublisher("tcp://127.0.0.1:*", context=context, curve_keys=server, on_auth_failure=refused.append)
        good = subscriber(context, pub.endpoint, pair(keys, "client"), server.public)
        stranger = subscriber(context, pub.endpoint, pair(keys, "stranger"), server.public)
        plain = subscriber(context, pub.endpoint, None, None)
        try:
            def delivered() -> bool:
                pub.send("status", {"n": 1})
                return bool(good.poll(20))

            wait_until(delivered, what="the allowed subscriber's first message")
            topic, body = good.recv_multipart()
            assert topic == b"status" and msgpack.unpackb(body) == {"n": 1}
            wait_until(lambda: (pub.send("status", {"n": 2}), len(set(refused)) >= 1 and len(refused) >= 2)[1],
                       what="refusals of the stranger and the plain subscriber")
            assert set(refused) == {"output"}
            assert not stranger.poll(50) and not plain.poll(50), "a refused subscriber received a message"
        finally:
            for s in (good, stranger, plain):
                s.close()
            pub.close()
    finally:
        auth.stop()


# CURVE on framed-IQ ingest ---------------------------------------------------------------------------------


def test_ingest_admits_an_allowed_edge_and_refuses_and_counts_a_stranger(context, keys):
    auth = security.CurveAuthenticator(context)
    auth.allow(security.INGEST_DOMAIN, keys["allowed"], key="security.ingest_clients_dir")
    server = pair(keys, "server")
    refused: list[str] = []
    edges = {name: FramedPublisher("tcp://127.0.0.1:*", context=context, curve_keys=pair(keys, name), server_key=server.public)
             for name in ("edge", "stranger")}
    receivers = {
        name: ZmqFramedReceiver(name, Options(endpoint=edge.endpoint), drops=TallyDropCounter(), context=context,
                                curve_keys=server, on_auth_failure=refused.append)
        for name, edge in edges.items()
    }
    collectors = {name: Collector(rx) for name, rx in receivers.items()}
    try:
        assert edges["edge"].wait_for_subscriber("edge", TIMEOUT_S), "the allowed edge never saw the daemon subscribe"
        edges["edge"].send(block(0, rid="edge"))
        got = collectors["edge"].queue.get(timeout=TIMEOUT_S)
        assert isinstance(got, IQBlock) and got.receiver_id == "edge" and len(got.samples) == 1000
        wait_until(lambda: "ingest:stranger" in refused, what="the stranger's refusal")
        assert not edges["stranger"].wait_for_subscriber("stranger", 0.2), "a refused edge saw a subscription"
        assert "ingest:edge" not in refused
    finally:
        for c in collectors.values():
            c.stop()
        for e in edges.values():
            e.close()
        auth.stop()


def test_publisher_needs_both_curve_arguments(keys):
    with pytest.raises(ValueError, match="both"):
        FramedPublisher("tcp://127.0.0.1:*", curve_keys=pair(keys, "edge"))


# Limits ---------------------------------------------------------------------------------------------------
def test_rate_limit_drops_and_counts_the_excess_and_flags_the_next_block(context):
    now = [0.0]
    drops = TallyDropCounter()
    edge = FramedPublisher("tcp://127.0.0.1:*", context=context, sndhwm=10_000)
    rx = ZmqFramedReceiver("rx1", Options(endpoint=edge.endpoint, max_rate_sps=3000.0, rate_burst_s=1.0),
                           drops=drops, context=context, clock=lambda: now[0])
    collector = Collector(rx)
    try:
        assert edge.wait_for_subscriber("rx1", TIMEOUT_S)
        for i in range(5):  # 5000 samples at once into a 3000-sample bucket: blocks 0..2 pass, 3 and 4 do not
            edge.send(block(i * 1000))
        got = [collector.queue.get(timeout=TIMEOUT_S) for _ in range(3)]
        wait_until(lambda: drops.dropped[("rx1", "rate_limit")] == 2000, what="2000 samples counted as rate_limit")
        now[0] = 10.0  # the bucket refills
        edge.send(block(5000))
        after = collector.queue.get(timeout=TIMEOUT_S)
    finally:
        collector.stop()
        edge.close()
    assert [b.sample_index for b in got] == [0, 1000, 2000] and not any(b.flags & Flags.OVERFLOW for b in got[1:])
    assert after.sample_index == 5000 and after.flags & Flags.OVERFLOW, "the pipeline must not count the gap again"
    assert drops.dropped[("rx1", "rate_limit")] == 2000 and not drops.bad_frames


def test_default_rate_limit_is_twice_the_configured_or_first_declared_rate_and_never_follows_a_later_one():
    now = [0.0]
    limit = RateLimit(None, 2.0, 1.0, clock=lambda: now[0])
    assert [limit.admit(100, 100.0) for _ in range(3)] == [True, True, False]
    assert not limit.admit(100, 50.0) and not limit.admit(100, 1e8), "another declared rate neither refills nor lifts it"
    assert limit.limit_sps == 200.0
    configured = RateLimit(None, 2.0, 1.0, expected_rate_hz=100.0, clock=lambda: now[0])
    assert [configured.admit(100, 1e8) for _ in range(3)] == [True, True, False]
    assert RateLimit(None, 0.0, 1.0).admit(10**9, 1.0), "factor 0 without max_rate_sps: no limit"


@pytest.mark.parametrize("configured_hz", [None, 1000.0])
def test_declaring_other_rates_neither_resets_nor_lifts_the_rate_limit(context, configured_hz):
    """Blocks alternating between 1 kHz and 100 MHz declared, all at one instant: the limit stays 2 x 1 kHz
    (configured, or the first block's rate) with a 1 s burst, so 2 of the 10 blocks pass."""
    drops = TallyDropCounter()
    edge = FramedPublisher("tcp://127.0.0.1:*", context=context, sndhwm=10_000)
    rx = ZmqFramedReceiver("rx1", Options(endpoint=edge.endpoint, sample_rate_hz=configured_hz, rate_burst_s=1.0),
                           drops=drops, context=context, clock=lambda: 0.0)
    collector = Collector(rx)
    try:
        assert edge.wait_for_subscriber("rx1", TIMEOUT_S)
        for i in range(10):
            rate = 1000.0 if i % 2 == 0 else 1e8
            edge.send(IQBlock("rx1", np.full(1000, 0.1, np.complex64), i * 1000, T0, "gps", rate, 145.5e6))
        got = [collector.queue.get(timeout=TIMEOUT_S) for _ in range(2)]
        wait_until(lambda: drops.dropped[("rx1", "rate_limit")] == 8000, what="8 blocks counted as rate_limit")
    finally:
        collector.stop()
        edge.close()
    assert [b.sample_index for b in got] == [0, 1000]


def test_oversize_frame_closes_the_link_which_is_counted_and_reopened(context):
    """ZMQ_MAXMSGSIZE is applied (set before connect); libzmq drops the link and does not reconnect, so the
    adapter counts it and raises ReceiverTransientError for the runner to reopen: no crash, no silent death."""
    drops = TallyDropCounter()
    edge = FramedPublisher("tcp://127.0.0.1:*", context=context)
    rx = ZmqFramedReceiver("rx1", Options(endpoint=edge.endpoint, max_message_bytes=4096), drops=drops, context=context)
    collector = Collector(rx)
    try:
        assert edge.wait_for_subscriber("rx1", TIMEOUT_S)
        edge.send(block(0, n=100))  # 800 bytes of payload
        assert isinstance(collector.queue.get(timeout=TIMEOUT_S), IQBlock)
        edge.send(block(100, n=10_000))  # 80 kB: over the limit
        ended = collector.queue.get(timeout=TIMEOUT_S)
    finally:
        collector.stop()
        edge.close()
    assert isinstance(ended, ReceiverTransientError) and "max_message_bytes = 4096" in str(ended)
    assert drops.bad_frames[("rx1", "link_error")] == 1


def test_frames_under_the_limit_that_together_exceed_it_are_counted_oversize(context):
    drops = TallyDropCounter()
    pub = context.socket(zmq.XPUB)
    pub.linger = 0
    pub.bind("tcp://127.0.0.1:*")
    frames = encode(block(0, n=120), "cf32")  # payload 960 bytes, header ~200: each under 1024, together over
    assert max(len(f) for f in frames) < 1024 < sum(len(f) for f in frames)
    rx = ZmqFramedReceiver("rx1", Options(endpoint=pub.getsockopt_string(zmq.LAST_ENDPOINT), max_message_bytes=1024),
                           drops=drops, context=context)
    collector = Collector(rx)
    try:
        assert pub.poll(TIMEOUT_S * 1000) and pub.recv() == b"\x01rx1"
        pub.send_multipart(frames)
        pub.send_multipart(encode(block(120, n=10), "cf32"))
        got = collector.queue.get(timeout=TIMEOUT_S)
    finally:
        collector.stop()
        pub.close()
    assert drops.bad_frames[("rx1", "oversize")] == 1 and drops.dropped[("rx1", "oversize")] == 120
    assert got.sample_index == 120 and got.flags & Flags.OVERFLOW


def test_options_refuse_nonsense_limits():
    with pytest.raises(ValueError, match="max_rate_sps"):
        Options(endpoint="tcp://x:1", max_rate_sps=0.0)
    with pytest.raises(ValueError, match="max_message_bytes"):
        Options(endpoint="tcp://x:1", max_message_bytes=0)


# `heimdall check` refuses what `heimdall run` refuses ------------------------------------------------------
def curve_site(tmp_path, domain: str, **security_keys):
    """A config in tmp_path/conf whose [security] names its key files relative to the config file, as
    operators write them; the working directory is elsewhere, so a cwd-relative lookup would fail."""
    from tests.helpers.verdicts import merged, write_config

    conf = tmp_path / "conf"
    if not (conf / "keys").exists():
        security.generate_keys(conf / "keys", "daemon")
        security.generate_keys(conf / "clients", "subscriber")
        (conf / "allowed").mkdir()
        os.link(conf / "clients" / "subscriber.key", conf / "allowed" / "subscriber.key")
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    os.chdir(tmp_path / "elsewhere")
    sec = {f"curve_{domain}": True, "secret_key": "keys/daemon.key_secret", f"{domain}_clients_dir": "allowed",
           **security_keys}
    return write_config(conf, merged({"security": sec})), conf


def _mode(mode):
    def apply(conf):
        (conf / "keys" / "daemon.key_secret").chmod(mode)
        return {}
    return apply


def _public_as_secret(conf):
    (conf / "keys" / "daemon.key").chmod(0o600)
    return {"secret_key": "keys/daemon.key"}


def _malformed(conf):
    bad = conf / "keys" / "bad.key_secret"
    bad.write_text("not a certificate\n")
    bad.chmod(0o600)
    return {"secret_key": "keys/bad.key_secret"}


def _empty_dir(domain):
    def apply(conf):
        (conf / "empty").mkdir()
        return {f"{domain}_clients_dir": "empty"}
    return apply


def _world_writable(conf):
    (conf / "allowed").chmod(0o777)
    return {}


KEY_CASES = [
    ("missing_key", lambda d: lambda conf: {"secret_key": "keys/absent.key_secret"},
     lambda d, c: [f"security.secret_key: secret key file {c}/keys/absent.key_secret does not exist"]),
    ("mode_0644", lambda d: _mode(0o644), lambda d, c: ["security.secret_key: secret key file", "(mode 0644)", "chmod 600"]),
    ("mode_0640", lambda d: _mode(0o640), lambda d, c: ["is accessible by group or others (mode 0640)"]),
    ("mode_0604", lambda d: _mode(0o604), lambda d, c: ["is accessible by group or others (mode 0604)"]),
    ("public_as_secret", lambda d: _public_as_secret,
     lambda d, c: [f"security.secret_key: {c}/keys/daemon.key holds no secret-key"]),
    ("malformed", lambda d: _malformed, lambda d, c: [f"security.secret_key: {c}/keys/bad.key_secret is not a ZeroMQ certificate"]),
    ("empty_allow_list", _empty_dir,
     lambda d, c: [f"security.{d}_clients_dir: allow-list directory {c}/empty has no *.key files"]),
    ("missing_allow_list", lambda d: lambda conf: {f"{d}_clients_dir": "absent"},
     lambda d, c: [f"security.{d}_clients_dir: allow-list directory {c}/absent does not exist"]),
    ("world_writable_allow_list", lambda d: _world_writable,
     lambda d, c: [f"security.{d}_clients_dir: allow-list directory {c}/allowed is writable by others (mode 0777)",
                   f"chmod o-w {c}/allowed"]),
]


@pytest.mark.parametrize("domain", ["output", "ingest"])
@pytest.mark.parametrize("make, expect", [c[1:] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES])
def test_check_refuses_every_key_and_allow_list_that_run_refuses(tmp_path, capsys, monkeypatch, domain, make, expect):
    from tests.helpers.verdicts import assert_both_refuse

    monkeypatch.chdir(tmp_path)
    _, conf = curve_site(tmp_path, domain)
    path, conf = curve_site(tmp_path, domain, **make(domain)(conf))
    assert_both_refuse(path, capsys, monkeypatch, *expect(domain, conf))


@pytest.mark.parametrize("domain", ["output", "ingest"])
def test_key_paths_are_relative_to_the_config_file_and_a_good_curve_config_passes_both(tmp_path, capsys, monkeypatch, domain):
    from streamer import config as config_mod
    from tests.helpers.verdicts import check_and_run

    monkeypatch.chdir(tmp_path)
    path, conf = curve_site(tmp_path, domain, server_key="keys/daemon.key")
    sec = config_mod.load(path).security
    assert (sec.secret_key, getattr(sec, f"{domain}_clients_dir"), sec.server_key) == (
        str(conf / "keys" / "daemon.key_secret"), str(conf / "allowed"), str(conf / "keys" / "daemon.key"))
    assert check_and_run(path, capsys, monkeypatch) == {"check": (0, None), "run": (0, None)}
