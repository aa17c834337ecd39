"""Run ``heimdall`` as it runs after the README's plain install (``pip install -e .``), in any venv.

``python -m tests.helpers.base_install ARGS...`` is ``heimdall ARGS...`` in a process where importing a package
that only an extra (``[test]``, ``[train]``, ``[pluto]``, ...) or nothing at all brought into this venv fails
with ``ModuleNotFoundError``, as it would on a machine with only the base dependencies. The base set is the
closure of heimdall-streamer's unconditional requirements, read from the installed metadata. Modules that no
installed distribution owns (the standard library, Debian's SoapySDR linked in by scripts/link-soapysdr) are
left alone. A first argument ``--missing=sigmf,jsonschema`` also blocks those, as on a broken install.
"""

from __future__ import annotations

import importlib.abc
import re
import sys
from importlib import metadata

DIST = "heimdall-streamer"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_distributions(dist: str = DIST) -> set[str]:
    """Canonical names of ``dist`` and everything its requirements without an ``extra`` marker pull in."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requirements:
            spec, _, marker = requirement.partition(";")
            if "extra" in marker:
                continue  # other markers (python_version, platform) are taken as met: this errs towards allowing
            todo.append(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1))
    return seen


def blocked_modules() -> set[str]:
    """Top-level import names owned only by installed distributions outside the base set."""
    base = base_distributions()
    return {module for module, dists in metadata.packages_distributions().items()
            if not any(canonical(d) in base for d in dists)}


class BlockNonBase(importlib.abc.MetaPathFinder):
    def __init__(self, blocked: set[str]):
        self.blocked = blocked

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not a base dependency of {DIST})", name=fullname)
        return None


def main(argv: list[str]) -> int:
    if DIST not in {canonical(d.metadata["Name"]) for d in metadata.distributions()}:
        raise SystemExit(f"{DIST} is not installed in {sys.prefix}: pip install -e .")
    blocked = blocked_modules()
    if argv and argv[0].startswith("--missing="):
        blocked |= set(argv.pop(0).partition("=")[2].split(","))
    sys.meta_path.insert(0, BlockNonBase(blocked))
    from streamer.cli import main as heimdall

    return heimdall(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
