"""ZeroMQ CURVE for the daemon's sockets: key files, allow-lists, the ZAP authenticator, refused peers counted.

Roles (docs/security.md has the operator's view):

- The central daemon is the CURVE **server** on both of its sockets, whichever side binds: the output
  XPUB (ZAP domain ``output``) and every framed-IQ ingest SUB (kind ``zmq``, ZAP domain ``ingest``).
  It proves itself with its key pair (``security.secret_key``) and admits only clients whose public
  key is a ``*.key`` certificate in that domain's allow-list directory.
- Subscribers and edge publishers (``heimdall receiver``) are CURVE **clients**: their own key pair plus
  the daemon's public key (``security.server_key``).

Key files are ZeroMQ certificates in the format of ``zmq.auth`` (``NAME.key`` holds the public key,
``NAME.key_secret`` the pair, mode 0600), written by ``heimdall keys generate DIR --name NAME``.

A peer that fails the security handshake is refused by libzmq; a socket monitor (``SocketEvents``)
sees each refusal (``EVENT_HANDSHAKE_FAILED_AUTH``: its key is not on the allow-list;
``..._PROTOCOL``: it does not know the daemon's key, or speaks no CURVE at all) and the owner of the
socket counts it (``heimdall_auth_failures_total{socket}``). A client retries every ~100 ms, so a
persistent misconfiguration counts up steadily: alert on ``rate()``.

Examples
--------
>>> import tempfile, zmq
>>> folder = tempfile.mkdtemp()
>>> public, secret = generate_keys(folder, "daemon")
>>> keys = load_secret_key(secret, key="security.secret_key")
>>> keys.public == load_public_key(public, key="security.server_key")
True
>>> is_loopback_endpoint("tcp://127.0.0.1:5557"), is_loopback_endpoint("tcp://0.0.0.0:5557")
(True, False)
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from streamer.core.errors import ConfigError

log = logging.getLogger(__name__)

INGEST_DOMAIN = "ingest"
OUTPUT_DOMAIN = "output"
_KEY_HINT = "create one with `heimdall keys generate DIR --name NAME`"

#: monitor events that mean "a peer was refused during the security handshake"
HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
}


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair (Z85 text as bytes, as libzmq's socket options take it) and the file it came from."""

    public: bytes
    secret: bytes
    path: Path


# Key files ------------------------------------------------------------------------------------------
def generate_keys(directory: str | os.PathLike, name: str = "heimdall") -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (secret, 0600) into ``directory``.

    The secret file is never readable by others, not even briefly: both files are created in a private
    (0700) temporary folder and then hard-linked into place, which also refuses to overwrite a key.
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r}: expected a plain file name such as 'daemon' or 'edge1'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path}: already exists; refusing to overwrite a key (move it away first)")
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keys-") as tmp:
        tmp_public, tmp_secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(tmp_secret, 0o600)
        os.chmod(tmp_public, 0o644)
        try:
            os.link(tmp_secret, secret)
            os.link(tmp_public, public)
        except FileExistsError as exc:
            raise ConfigError(f"{exc.filename2 or exc.filename}: already exists; refusing to overwrite a key") from None
    return public, secret


def _stat_key_file(path: Path, key: str, what: str) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{key}: {what} file {path} does not exist ({_KEY_HINT})") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {what} file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{key}: {what} file {path} is not a regular file")
    return st


def _read_certificate(path: Path, key: str, what: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        raise ConfigError(f"{key}: {path} is not a ZeroMQ certificate (no public-key line); {_KEY_HINT}") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {what} file {path}: {exc.strerror or exc}") from None
    for label, value in (("public-key", public), ("secret-key", secret)):
        if value is not None and not _is_z85_key(value):
            raise ConfigError(f"{key}: {path}: {label} is not a 40-character Z85 CURVE key")
    return public, secret


def _is_z85_key(value: bytes) -> bool:
    try:
        return len(zmq.utils.z85.decode(value)) == 32
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def load_secret_key(path: str | os.PathLike | None, *, key: str) -> KeyPair:
    """Read a ``NAME.key_secret`` file; ConfigError (naming ``key`` and the file) if missing, unreadable,
    readable by group or others, or not a secret certificate."""
    if path is None:
        raise ConfigError(f"{key}: required when CURVE is enabled: the path of a NAME.key_secret file ({_KEY_HINT})")
    path = Path(path)
    st = _stat_key_file(path, key, "secret key")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{key}: secret key file {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"anyone who reads it can impersonate this host. Fix: chmod 600 {path}"
        )
    public, secret = _read_certificate(path, key, "secret key")
    if secret is None:
        raise ConfigError(
            f"{key}: {path} holds no secret-key (is it the public NAME.key? the secret one is NAME.key_secret)"
        )
    return KeyPair(public=public, secret=secret, path=path)


def load_public_key(path: str | os.PathLike | None, *, key: str) -> bytes:
    """Read the public key of a ``NAME.key`` (or ``NAME.key_secret``) certificate."""
    if path is None:
        raise ConfigError(f"{key}: required when CURVE is enabled: the path of the server's NAME.key file")
    path = Path(path)
    _stat_key_file(path, key, "public key")
    public, _ = _read_certificate(path, key, "public key")
    return public


def load_allow_list(directory: str | os.PathLike | None, *, key: str) -> dict[bytes, Path]:
    """Public keys of the ``*.key`` certificates in ``directory`` -> their files; ConfigError if it is
    missing, unreadable, empty (every client would be refused) or holds a broken certificate."""
    if directory is None:
        raise ConfigError(f"{key}: required when CURVE is enabled: a directory of allowed clients' NAME.key files")
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{key}: allow-list directory {directory} does not exist or is not a directory")
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o002:
        raise ConfigError(
            f"{key}: allow-list directory {directory} is writable by others (mode {mode:04o}); anyone on this host "
            f"could add a key and be admitted. Fix: chmod o-w {directory}"
        )
    try:
        files = sorted(directory.glob("*.key"))
    except OSError as exc:
        raise ConfigError(f"{key}: cannot list allow-list directory {directory}: {exc.strerror}") from None
    if not files:
        raise ConfigError(f"{key}: allow-list directory {directory} has no *.key files: every client would be refused")
    keys = {}
    for path in files:
        public, _ = _read_certificate(path, key, "allowed client key")
        keys[public] = path
    return keys


# Socket roles ---------------------------------------------------------------------------------------
def make_curve_server(sock: zmq.Socket, keys: KeyPair, domain: str) -> None:
    """Make ``sock`` a CURVE server whose clients the ZAP handler checks against ``domain``'s allow-list.

    Set before bind/connect. Start a ``CurveAuthenticator`` on the socket's context first (the Daemon
    does): without a ZAP handler libzmq admits every client that knows the server's public key.
    """
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    sock.zap_domain = domain.encode()


def make_curve_client(sock: zmq.Socket, keys: KeyPair, server_public: bytes) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is ``server_public``. Set before connect/bind."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server_public


class CurveAuthenticator:
    """The ZAP handler of one ZeroMQ context (libzmq allows one per context), one allow-list per domain.

    It checks only the CURVE sockets of ``context``: the daemon passes its own context here and opens all
    its sockets (output, ZeroMQ receivers) in the same one.

    Examples
    --------
    >>> import tempfile, zmq
    >>> folder = tempfile.mkdtemp()
    >>> _ = generate_keys(folder, "subscriber")
    >>> ctx = zmq.Context()
    >>> auth = CurveAuthenticator(ctx)
    >>> auth.allow(OUTPUT_DOMAIN, folder, key="security.output_clients_dir")
    1
    >>> auth.stop(); ctx.term()
    """

    def __init__(self, context: zmq.Context) -> None:
        self._auth = ThreadAuthenticator(context, log=logging.getLogger("heimdall.zap"))
        self._auth.start()

    def allow(self, domain: str, directory: str | os.PathLike | None, *, key: str) -> int:
        """Admit the clients whose ``*.key`` files are in ``directory`` to ``domain``; returns how many."""
        keys = load_allow_list(directory, key=key)
        self._auth.configure_curve(domain=domain, location=str(directory))
        log.info("CURVE %s: %d allowed client key(s) from %s", domain, len(keys), directory)
        return len(keys)

    def stop(self) -> None:
        self._auth.stop()


# Refused peers ---------------------------------------------------------------------------------------
class SocketEvents:
    """A monitor on one socket, read without blocking by the thread that owns the socket.

    ``drain()`` reads what is pending, calls ``on_failure(label)`` for every refused handshake (logging a
    warning at most once a minute per socket) and returns all events as ``(event, value)`` pairs.
    Call ``close()`` before closing the socket itself.
    """

    def __init__(self, sock: zmq.Socket, label: str, on_failure: Callable[[str], None], *, curve: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sock = sock
        self.label = label
        self._on_failure = on_failure
        self._curve = curve
        self._clock = clock
        self.monitor = sock.get_monitor_socket()
        self.failures = 0
        self._reported = 0
        self._last_log = float("-inf")

    def drain(self) -> list[tuple[int, int]]:
        events = []
        while True:
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:  # closed underneath us during shutdown
                break
            message = parse_monitor_message(frames)
            event, value = int(message["event"]), int(message["value"])
            events.append((event, value))
            if event in HANDSHAKE_FAILURES:
                self._refused(HANDSHAKE_FAILURES[event])
        return events

    def _refused(self, kind: str) -> None:
        self.failures += 1
        self._on_failure(self.label)
        now = self._clock()
        if now - self._last_log >= 60.0:
            hint = (
                "its key is not in the allow-list, or it does not use this daemon's public key"
                if self._curve else "it speaks a security mechanism this socket does not (CURVE is off here)"
            )
            log.warning("%s: refused a peer (handshake failed: %s; %d refusal(s) since the last report): %s",
                        self.label, kind, self.failures - self._reported, hint)
            self._last_log = now
            self._reported = self.failures

    def close(self) -> None:
        if self.monitor.closed:
            return
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)


# Exposure ---------------------------------------------------------------------------------------------
_LOOPBACK_HOSTS = {"localhost", "::1", "[::1]", "ip6-localhost"}
ENDPOINT_FORMS = "tcp://HOST:PORT (PORT 0..65535 or *), ipc://PATH or inproc://NAME"


def parse_endpoint(endpoint: str) -> tuple[str, str, str]:
    """``(scheme, host or path, port)`` of a ZeroMQ endpoint (port "" for ipc/inproc); ValueError naming the
    forms expected otherwise.

    Examples
    --------
    >>> parse_endpoint("tcp://127.0.0.1:5557"), parse_endpoint("ipc:///run/heimdall.sock")
    (('tcp', '127.0.0.1', '5557'), ('ipc', '/run/heimdall.sock', ''))
    >>> parse_endpoint("garbage")
    Traceback (most recent call last):
    ...
    ValueError: expected tcp://HOST:PORT (PORT 0..65535 or *), ipc://PATH or inproc://NAME, got 'garbage'
    """
    scheme, sep, rest = endpoint.partition("://")
    host, colon, port = rest.rpartition(":") if scheme == "tcp" else (rest, "", "")
    host = host.rsplit(";", 1)[-1]  # tcp://source;dest form
    ok = bool(sep and host.strip()) and scheme in ("tcp", "ipc", "inproc")
    if scheme == "tcp":
        ok = ok and bool(colon) and (port == "*" or (port.isdigit() and int(port) < 65536))
    if not ok:
        raise ValueError(f"expected {ENDPOINT_FORMS}, got {endpoint!r}")
    return scheme, host, port


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints bound to a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0] if scheme == "tcp" else rest
    host = host.rsplit(";", 1)[-1]  # tcp://source;dest form
    return is_loopback_host(host)


def is_loopback_host(host: str) -> bool:
    host = host.strip()
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def warn_if_exposed(what: str, endpoint: str, *, curve: bool) -> bool:
    """Log a warning when ``endpoint`` binds beyond loopback without CURVE; returns whether it warned."""
    if curve or is_loopback_endpoint(endpoint):
        return False
    log.warning("%s binds %s, not loopback, without CURVE: anyone who can reach it can connect "
                "(enable CURVE in [security] or bind 127.0.0.1; see docs/security.md)", what, endpoint)
    return True


def edge_curve(config) -> dict:
    """``FramedPublisher`` keyword arguments for ``heimdall receiver`` under ``[security] curve_ingest``:
    this edge's key pair (``secret_key``) and the central daemon's public key (``server_key``); ``{}`` if off."""
    sec = config.security
    if not sec.curve_ingest:
        return {}
    return {
        "curve_keys": load_secret_key(sec.secret_key, key=f"{config.source}: security.secret_key"),
        "server_key": load_public_key(sec.server_key, key=f"{config.source}: security.server_key"),
    }
