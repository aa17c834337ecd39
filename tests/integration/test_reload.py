"""SIGHUP reloads the config: unchanged receivers keep running untouched, added ones start, removed ones
stop, and a broken config is refused while the daemon goes on."""

from __future__ import annotations

import re
import signal
import time
import urllib.request

from tests.helpers.daemon import default_config, default_receivers, merge, running_daemon, to_toml


def scrape(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode()


def value(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)  # polling a condition with a deadline
    raise AssertionError(f"timed out waiting for {what}")


def test_sighup_reload_keeps_unchanged_receivers_and_refuses_a_broken_config(tmp_path):
    receivers = default_receivers()
    with running_daemon(tmp_path, overrides={"receivers": receivers}) as d:
        wait_for(lambda: (value(scrape(d.metrics_url), "heimdall_samples_received_total", receiver="milano") or 0) > 0,
                 30, "milano to deliver")
        before = scrape(d.metrics_url)
        torino_before = value(before, "heimdall_samples_received_total", receiver="torino")

        # Drop milano, add an extra receiver, change nothing else; then SIGHUP.
        new_receivers = [rx for rx in receivers if rx["id"] != "milano"] + [
            {"id": "asti", "kind": "simulator", "lat": 44.9, "lon": 8.2, "alt_m": 150.0}]
        config = merge(default_config(), {"receivers": new_receivers})
        d.config_path.write_text(to_toml(config))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log(r"reloaded .*kept .*torino.*\(re\)started asti, stopped milano", timeout_s=20)
        assert "needs a restart" not in d.stderr  # only receivers changed
        after = wait_for(lambda: (lambda t: t if (value(t, "heimdall_samples_received_total", receiver="asti") or 0) > 0 else None)(
            scrape(d.metrics_url)), 20, "asti to deliver")
        # torino's adapter kept running: its count carried on, it did not restart from zero
        assert value(after, "heimdall_samples_received_total", receiver="torino") > torino_before
        assert value(after, "heimdall_config_reloads_total", result="applied") == 1
        assert 'reason="discontinuity"' not in "\n".join(l for l in after.splitlines() if 'receiver="torino"' in l)

        # A broken config is refused; the daemon keeps going on the running one.
        d.config_path.write_text(to_toml(merge(config, {"pipeline": {"min_receivers": "three"}})))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log(r"reload refused, keeping the running config: .*pipeline.min_receivers", timeout_s=20)
        wait_for(lambda: value(scrape(d.metrics_url), "heimdall_config_reloads_total", result="refused") == 1, 10,
                 "the refused reload to be counted")
        assert d.proc.poll() is None
