"""Config ``kind`` -> adapter class, imported only when a receiver of that kind is opened, and the install hint
for a foreign library an adapter lacks (``MissingDependencyError``).

Examples
--------
>>> from receivers.registry import adapter_class
>>> adapter_class("sopy")
Traceback (most recent call last):
...
streamer.core.errors.ConfigError: unknown receiver kind 'sopy'; known: ...
"""

from __future__ import annotations

import importlib

from streamer.core.errors import ConfigError, MissingDependencyError

#: kind -> "module:Class". One line per adapter.
KINDS: dict[str, str] = {
    "simulator": "receivers.simulator:SimulatedReceiver",
    "zmq": "receivers.zmq_framed:ZmqFramedReceiver",
    "gnuradio_zmq": "receivers.gnuradio_zmq:GnuRadioZmqReceiver",
    "pluto": "receivers.pluto:PlutoReceiver",
    "soapy": "receivers.soapy:SoapyReceiver",
    "rtl_tcp": "receivers.rtl_tcp:RtlTcpReceiver",
    "kiwisdr": "receivers.kiwisdr:KiwiSdrReceiver",
    "sigmf": "receivers.sigmf_file:SigmfReceiver",
}

#: top-level import name of a foreign dependency -> how to install it. rtl_tcp and kiwisdr need none: they speak
#: their protocols over the standard library's sockets (kiwisdr writes its own RFC 6455 websocket client).
INSTALL_HINTS: dict[str, str] = {
    "SoapySDR": "apt-get install python3-soapysdr, then link it into the venv (docs/receivers.md, SoapySDR)",
    "adi": "pip install -e '.[pluto]'",
    "iio": "apt-get install libiio0 && pip install -e '.[pluto]'",
    "sigmf": "pip install -e .",  # a base dependency: missing means a broken install
    "jsonschema": "pip install -e .",  # sigmf's and receivers/sigmf_file.py's
}


def adapter_class(kind: str) -> type:
    """Import and return the adapter class for ``kind``; errors say what is known or what to install."""
    try:
        target = KINDS[kind]
    except KeyError:
        raise ConfigError(f"unknown receiver kind {kind!r}; known: {', '.join(sorted(KINDS))}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        hint = INSTALL_HINTS.get(missing)
        if hint is None:
            raise
        raise MissingDependencyError(f"receiver kind {kind!r} needs {missing!r}: {hint}") from exc
    return getattr(module, class_name)


def open_receiver(rx, ctx):
    """Build the adapter for one ``ReceiverConfig``."""
    return adapter_class(rx.kind).from_config(rx, ctx)
