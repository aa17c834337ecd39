"""The one-line description every configuration key carries: ``field(metadata=doc("..."))``.

Config dataclasses (``streamer.config``) and each adapter's ``Options`` (``receivers/*.py``) attach it;
``streamer.config.options_table`` reads it back to generate docs/configuration.md.

>>> from dataclasses import dataclass, field, fields
>>> @dataclass(frozen=True)
... class Options:
...     gain_db: float = field(default=0.0, metadata=doc("RF gain (dB)"))
>>> fields(Options)[0].metadata["doc"]
'RF gain (dB)'
"""

from __future__ import annotations


def doc(text: str) -> dict[str, str]:
    """Field metadata holding ``text`` under the key ``"doc"``."""
    return {"doc": text}
