"""Every adapter against its peer: highest sustained rate with no drops, and CPU at a typical rate.

Runs, each in its own process (SoapySDR loads its modules once per process; the fake servers run in
child processes so that CPU figures are the adapters'):

- SoapySDR: tests/receivers/soapy_device/throughput.py (the C++ test device through the real binding);
- rtl_tcp and KiwiSDR: benchmarks/bench_net_receivers.py (protocol-exact fake servers on loopback);
- ADALM-Pluto: benchmarks/bench_pluto.py (real libiio + pyadi-iio against the fake iiod).

Needs a source checkout (the peers live under tests/) and the peers installed (``bash .ci/run`` installs
them). ``heimdall bench receivers`` runs this file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BENCHES = {
    "soapy": ["tests/receivers/soapy_device/throughput.py", "{seconds}"],
    "rtl_tcp + kiwisdr": ["benchmarks/bench_net_receivers.py", "--seconds", "{seconds}"],
    "pluto": ["benchmarks/bench_pluto.py", "--rates", "4e6", "8e6", "16e6", "--seconds", "{seconds}"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heimdall bench receivers", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed window per measurement (s)")
    parser.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these")
    args = parser.parse_args(argv)
    failed = 0
    for name, command in BENCHES.items():
        if args.only and name not in args.only:
            continue
        script = ROOT / command[0]
        if not script.is_file():
            print(f"## {name}: {command[0]} not found (needs a source checkout)")
            failed += 1
            continue
        cmd = [sys.executable, str(script)] + [c.format(seconds=args.seconds) for c in command[1:]]
        print(f"## {name}: {' '.join([Path(sys.executable).name, *command[:1], *cmd[2:]])}", flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        print(proc.stdout.rstrip())
        if proc.returncode:
            print(proc.stderr.rstrip()[-2000:])
            failed += 1
        print()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
