"""The tree keeps its promises: every receiver kind has a module, a test and a doc page; generated docs are
current; the embedded default config loads and agrees with the dataclass defaults; documented message keys
are the keys the code sends."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from receivers.registry import KINDS
from streamer import config as config_mod
from streamer.core.geodesy import Ellipse
from streamer.daemon.messages import EmissionEvent, EstimateOut, Localization, ReceiverHealth, Status, Truth

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_module_test_and_docs(kind):
    module = KINDS[kind].split(":")[0].split(".")[-1]
    assert (ROOT / "receivers" / f"{module}.py").is_file()
    tests = {ROOT / "tests" / "receivers" / f"test_{name}.py" for name in (kind, module)}
    assert any(t.is_file() for t in tests), f"no tests/receivers/test_{kind}.py"
    page = ROOT / "docs" / "receivers" / f"{kind}.md"
    assert page.is_file(), f"missing {page.relative_to(ROOT)}"
    index = (ROOT / "docs" / "receivers" / "README.md").read_text()
    assert f"[`{kind}`]({kind}.md)" in index


def test_configuration_doc_is_generated_from_the_dataclasses():
    expected = config_mod.configuration_markdown() + "\n"
    actual = (ROOT / "docs" / "configuration.md").read_text()
    assert actual == expected, "docs/configuration.md is stale: run `python -m streamer.config > docs/configuration.md`"


def test_embedded_default_loads_from_the_package_and_matches_dataclass_defaults():
    cfg = config_mod.load()
    assert len(cfg.receivers) == 7 and cfg.network.target_freq_hz == 145.5e6
    with open(ROOT / "config" / "default.toml", "rb") as f:
        data = tomllib.load(f)
    defaults = config_mod.Config()
    for table, values in data.items():
        if table == "receivers":
            continue
        section = getattr(defaults, table)
        for key, value in values.items():
            default = getattr(section, key)
            assert default == pytest.approx(value) if isinstance(value, float) else default == value, (
                f"default.toml [{table}] {key} = {value!r}, dataclass default {default!r}"
            )


def _documented_keys(section_heading: str) -> set[str]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    part = text.split(section_heading, 1)[1].split("\n### ", 1)[0]
    keys = set()
    for cell in re.findall(r"^\| ([^|]+) \|", part, flags=re.M):
        keys.update(re.findall(r"`([a-z_0-9]+)`", cell))
    return keys


def test_protocol_doc_lists_exactly_the_keys_each_message_carries():
    ellipse = Ellipse(0.95, 2.0, 1.0, 10.0)
    est = EstimateOut("physics", 45.0, 7.0, np.eye(2), ellipse)
    loc = Localization(0, 1, 2, est, ("a",), {"a": -90.0}, {"name": "x", "version": "1", "sha256": ""}, 1.0, 2.0, "default")
    health = ReceiverHealth(True, 0.1, 1e6, "host", 10, 0, 0.5)
    status = Status(1, 1.0, "physics", 1, 1, {"a": health})
    truth = Truth(1, 45.0, 7.0, 30.0, True)
    # The table lists a band daemon's keys; a single-channel daemon's messages carry all but the band-only ones.
    band_loc = dataclasses.replace(loc, channel="A", channel_hz=145.5e6, emission_id=0, stage="interim")
    assert _documented_keys("### `loc`") == set(band_loc.to_wire())
    assert set(band_loc.to_wire()) - set(loc.to_wire()) == {"channel", "channel_hz", "emission_id", "stage"}
    emission = EmissionEvent("end", 0, "A", 145.5e6, 1, 2, {"a": 20.0}, 10, "default")
    assert _documented_keys("### `emission`") == set(emission.to_wire())
    band_truth = dataclasses.replace(truth, transmitter=1, channel="A", channel_hz=145.5e6)
    assert _documented_keys("### `truth`") == set(band_truth.to_wire())
    assert set(band_truth.to_wire()) - set(truth.to_wire()) == {"transmitter", "channel", "channel_hz"}
    assert _documented_keys("### `status`") == set(status.to_wire())


def test_no_torch_import_in_the_daemon_packages():
    for package in ("streamer", "receivers"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"^\s*(import torch|from torch)", text, flags=re.M), f"{path} imports torch"


# Where commands and install hints are written for people: the sources' messages and docstrings, docs, examples.
TEXT_DIRS = ("streamer", "receivers", "models", "docs", "config", "tests", "scripts", "benchmarks", ".ci")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".json", ".yml", ".yaml", ".service", ".sh", ""}


def text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for top in TEXT_DIRS:
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and "__pycache__" not in p.parts and "_build" not in p.parts]
    return files


# Spelled in two pieces so that this file does not match itself.
RETIRED = {
    "check" + "-config": "the command is `heimdall check -c FILE`",
    "heimdall-streamer" + "[": "install extras from the checkout: pip install -e '.[EXTRA]' (the package index does not serve "
                              "heimdall-streamer)",
}


@pytest.mark.parametrize("text", sorted(RETIRED))
def test_no_retired_command_or_install_form_is_quoted_anywhere(text):
    found = [f"{path.relative_to(ROOT)}:{n}" for path in text_files()
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if text in line]
    assert not found, f"{text!r} quoted in {', '.join(found)}: {RETIRED[text]}"


def _subcommands(parser) -> dict:
    import argparse

    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def test_every_heimdall_command_quoted_in_the_docs_and_examples_exists():
    """`heimdall SUB` (and `heimdall bench|keys SUB`) in README.md, docs/ and config/ name real subcommands."""
    from streamer.cli import COMMANDS, build_parser

    commands = _subcommands(build_parser(*COMMANDS))  # every command's options, so `heimdall bench X` is checked too
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(p for p in (ROOT / "config").rglob("*") if p.is_file())]
    wrong = []
    for path in files:
        # Lower-case `heimdall ` not inside a path or name (/opt/heimdall/, heimdall_*, heimdall-0.5.0.onnx)
        for m in re.finditer(r"(?<![\w/.-])heimdall ([a-z][a-z_-]*)(?: ([a-z][a-z_-]*))?", path.read_text()):
            sub, subsub = m.groups()
            if sub not in commands or (_subcommands(commands[sub]) and subsub not in _subcommands(commands[sub])):
                wrong.append(f"{path.relative_to(ROOT)}: {m.group(0)!r}")
    assert not wrong, f"not subcommands of `heimdall` (streamer/cli.py): {wrong}; known: {', '.join(sorted(commands))}"
