"""JsonlArchive: JSON lines, rotation, append on restart, write errors counted without stopping publication."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import msgpack
import pytest
import zmq
from prometheus_client import CollectorRegistry

from streamer.daemon import archive as archive_mod
from streamer.daemon.archive import FILE_NAME, JsonlArchive, encode_line


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_line_is_the_topic_and_the_payload_in_strict_json():
    line = encode_line("loc", {"seq": 3, "lat": 45.0, "cov_en_m2": [[1.0, float("nan")], [0.0, float("inf")]]})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"topic": "loc", "seq": 3, "lat": 45.0, "cov_en_m2": [[1.0, None], [0.0, None]]}


def test_rotation_keeps_the_newest_files_and_never_splits_a_line(tmp_path):
    size = len(encode_line("status", {"seq": 0}))
    with JsonlArchive(tmp_path, max_bytes=3 * size, keep_files=2) as archive:
        for seq in range(10):  # same length lines: 3 per file
            assert archive.write("status", {"seq": seq})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [FILE_NAME, f"{FILE_NAME}.1", f"{FILE_NAME}.2"]
    assert [m["seq"] for m in lines(tmp_path / f"{FILE_NAME}.2")] == [3, 4, 5]
    assert [m["seq"] for m in lines(tmp_path / f"{FILE_NAME}.1")] == [6, 7, 8]
    assert [m["seq"] for m in lines(tmp_path / FILE_NAME)] == [9]
    assert all(p.stat().st_size <= 3 * size for p in tmp_path.iterdir())


def test_keep_zero_deletes_the_full_file_and_a_huge_line_gets_a_file_of_its_own(tmp_path):
    with JsonlArchive(tmp_path, max_bytes=50, keep_files=0) as archive:
        archive.write("loc", {"seq": 0})
        archive.write("loc", {"seq": 1, "pad": "x" * 100})
        archive.write("loc", {"seq": 2})
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]
    assert [m["seq"] for m in lines(tmp_path / FILE_NAME)] == [2]


def test_a_restart_appends_and_counts_the_existing_size_for_rotation(tmp_path):
    size = len(encode_line("loc", {"seq": 0}))
    with JsonlArchive(tmp_path, max_bytes=4 * size, keep_files=3) as archive:
        archive.write("loc", {"seq": 0})
        archive.write("loc", {"seq": 1})
    with JsonlArchive(tmp_path, max_bytes=4 * size, keep_files=3) as archive:
        archive.write("loc", {"seq": 2})
        archive.write("loc", {"seq": 3})
        archive.write("loc", {"seq": 4})  # the file already holds 4 lines: this one rotates
    assert [m["seq"] for m in lines(tmp_path / f"{FILE_NAME}.1")] == [0, 1, 2, 3]
    assert [m["seq"] for m in lines(tmp_path / FILE_NAME)] == [4]


def test_a_full_disk_is_counted_the_partial_line_cut_and_writing_resumes(tmp_path, monkeypatch):
    errors: list[str] = []
    real_write = os.write
    full = {"on": False}

    def write(fd, data):
        if full["on"]:
            real_write(fd, bytes(data[:7]))  # the kernel took a few bytes, then the disk was full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(archive_mod.os, "write", write)
    archive = JsonlArchive(tmp_path, max_bytes=10_000, keep_files=1, on_error=errors.append)
    assert archive.write("loc", {"seq": 0})
    full["on"] = True
    assert not archive.write("loc", {"seq": 1})
    assert not archive.write("status", {"seq": 2})
    full["on"] = False
    assert archive.write("loc", {"seq": 3})
    archive.close()
    assert errors == ["ENOSPC", "ENOSPC"] and archive.errors == 2
    assert [m["seq"] for m in lines(tmp_path / FILE_NAME)] == [0, 3], "a half-written line was left behind"


def test_a_torn_last_line_from_a_power_cut_stays_alone_and_is_counted_once(tmp_path):
    errors: list[str] = []
    size = len(encode_line("loc", {"seq": 0}))
    with JsonlArchive(tmp_path, max_bytes=10 * size, keep_files=1) as archive:
        archive.write("loc", {"seq": 0})
        archive.write("loc", {"seq": 1})
    path = tmp_path / FILE_NAME
    torn = encode_line("loc", {"seq": 2, "lat": 45.0})[:17]  # the power went mid-line: no newline at the end
    with path.open("ab") as f:
        f.write(torn)
    with JsonlArchive(tmp_path, max_bytes=10 * size, keep_files=1, on_error=errors.append) as archive:
        assert archive.write("loc", {"seq": 3}) and archive.write("loc", {"seq": 4})
    with JsonlArchive(tmp_path, max_bytes=10 * size, keep_files=1, on_error=errors.append) as archive:
        assert archive.write("loc", {"seq": 5})  # a clean file: nothing more to end or count
    raw = path.read_bytes().split(b"\n")
    assert raw[-1] == b"" and raw[2] == torn
    assert [json.loads(line)["seq"] for i, line in enumerate(raw[:-1]) if i != 2] == [0, 1, 3, 4, 5]
    assert errors == ["torn_line"] and archive.errors == 0  # counted by the run that found it
    assert path.stat().st_size == 2 * size + len(torn) + 1 + 3 * size  # one newline added, nothing cut


def test_an_unwritable_folder_is_counted_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    errors: list[str] = []
    archive = JsonlArchive(blocker / "archive", max_bytes=1000, keep_files=1, on_error=errors.append)
    assert not archive.write("loc", {"seq": 0})
    assert errors and errors[0] in ("ENOTDIR", "EEXIST")


def test_the_daemon_archives_what_it_publishes_and_keeps_publishing_when_the_disk_is_full(tmp_path, monkeypatch):
    from streamer.daemon.app import Daemon
    from streamer.config import load
    import dataclasses

    base = load(None)
    config = dataclasses.replace(
        base,
        output=dataclasses.replace(
            base.output, endpoint="tcp://127.0.0.1:*",
            archive=dataclasses.replace(base.output.archive, dir=str(tmp_path / "archive"), max_bytes=1 << 20),
        ),
        metrics=dataclasses.replace(base.metrics, enabled=False),
    )
    registry = CollectorRegistry()
    daemon = Daemon(config, registry=registry)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(daemon.publisher.endpoint)
    try:
        status = daemon.pipeline.status().to_wire()
        received = []
        for _ in range(500):  # until the subscription has reached the publisher
            daemon._publish("status", status)
            if sub.poll(10):
                received.append(sub.recv_multipart())
                break
        assert received, "the subscriber got nothing"
        daemon._publish("truth", {"t_ns": 1})  # not archived: simulator ground truth
        monkeypatch.setattr(archive_mod.os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        assert daemon._publish("status", {**status, "marker": 1}), "publication stopped with the archive"
        after = []
        while sub.poll(2000):
            topic, body = sub.recv_multipart()
            after.append((topic, msgpack.unpackb(body).get("marker")))
            if after[-1] == (b"status", 1):
                break
        assert after[-1] == (b"status", 1), f"the status sent while the disk was full did not arrive: {after}"
    finally:
        sub.close()
        daemon.shutdown()  # closes the publisher and the archive, and terminates the daemon's ZeroMQ context
    assert registry.get_sample_value("heimdall_archive_errors_total", {"reason": "ENOSPC"}) == 1
    archived = lines(tmp_path / "archive" / FILE_NAME)
    assert archived and {m["topic"] for m in archived} == {"status"}
