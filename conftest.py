"""What ``--doctest-modules`` must not import: ``python -m streamer`` (importing it runs the command line), the
peer scripts under tests/receivers/ and, where torch is not installed (``pip install -e '.[test]'`` without the
``train`` extra), the trainer modules that import torch at the top, directly or through a sibling. The rest of
models/train imports without torch, so its doctests still run there."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

collect_ignore = [
    "streamer/__main__.py",
    # Scripts the slow tests run in a peer's own interpreter (GNU Radio, SoapySDR): they do not import in the venv.
    "tests/receivers/gnuradio_flowgraph.py",
    "tests/receivers/soapy_device/throughput.py",
]

if importlib.util.find_spec("torch") is None:
    # Top-level imports only (column 0): an import inside a function is lazy and does not stop the module importing.
    _IMPORT = re.compile(r"^(?:import|from)\s+(?:(torch)\b|models\.train\.(\w+)|models\.train\s+import\s+(\w+)|\.(\w+))", re.MULTILINE)
    _imports = {path.stem: {next(g for g in m.groups() if g) for m in _IMPORT.finditer(path.read_text(encoding="utf-8"))}
                for path in (Path(__file__).parent / "models" / "train").glob("*.py")}
    _needs_torch = {"torch"}
    while _grown := {name for name, names in _imports.items() if names & _needs_torch} - _needs_torch:
        _needs_torch |= _grown
    collect_ignore += [f"models/train/{name}.py" for name in sorted(_needs_torch - {"torch"})]
