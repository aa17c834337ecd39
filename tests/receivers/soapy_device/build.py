"""Build the software SoapySDR device (driver "heimdalltest") that tests/receivers/test_soapy.py streams from.

Usage: ``python tests/receivers/soapy_device/build.py [OUT_DIR]`` prints the folder holding
``libHeimdallTest.so``; load it alone with ``SOAPY_SDR_ROOT=/nonexistent SOAPY_SDR_PLUGIN_PATH=<folder>``.
The result is cached under tests/receivers/_build/<hash of source and command> (git-ignored).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "heimdall_test_device.cpp"
CACHE = HERE.parent / "_build"
LIBRARY = "libHeimdallTest.so"
HEADER = Path("/usr/include/SoapySDR/Device.hpp")
ENABLE = "apt-get install python3-soapysdr soapysdr-tools libsoapysdr-dev && scripts/link-soapysdr .venv"


def compile_command(output: Path) -> list[str]:
    return ["g++", "-shared", "-fPIC", "-O2", "-std=c++17", "-Wall", "-o", str(output), str(SOURCE), "-lSoapySDR"]


def missing_prerequisites() -> str | None:
    """Why the device cannot be built here, or None."""
    if shutil.which("g++") is None:
        return "g++ not found"
    if not HEADER.exists():
        return f"{HEADER} not found (libsoapysdr-dev)"
    return None


def build_device(cache: Path = CACHE) -> Path:
    """Compile (or reuse) the module; return the folder that holds only it."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(compile_command(Path(LIBRARY))).encode()).hexdigest()[:16]
    folder = cache / digest
    target = folder / LIBRARY
    if target.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{LIBRARY}.{os.getpid()}.partial"
    proc = subprocess.run(compile_command(partial), capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building the SoapySDR test device failed:\n{proc.stderr}")
    os.replace(partial, target)  # atomic: a concurrent run sees no half-written module
    return folder


if __name__ == "__main__":
    reason = missing_prerequisites()
    if reason:
        sys.exit(f"{reason}: {ENABLE}")
    print(build_device(Path(sys.argv[1]) if len(sys.argv) > 1 else CACHE))
