"""``heimdall keys generate DIR``: write a CURVE key pair, NAME.key (public) and NAME.key_secret (secret, mode
0600), for the encrypted links of docs/security.md."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands and options of ``heimdall keys``."""
    keys_sub = parser.add_subparsers(dest="keys", required=True)
    generate = keys_sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (secret, mode 0600)")
    generate.add_argument("dir", help="folder to write into (created if missing)")
    generate.add_argument("--name", default="heimdall", help="file name stem (default 'heimdall')")


def run(args: argparse.Namespace) -> int:
    """Write the pair and say which file goes where; exit status 0."""
    from streamer.core.security import generate_keys

    public, secret = generate_keys(args.dir, args.name)
    print(f"public key {public} (give it to peers; allow-lists are folders of these)\nsecret key {secret} (mode 0600; keep it on this host)")
    return 0
