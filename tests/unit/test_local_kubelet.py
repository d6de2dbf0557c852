"""The local kubelet reports a termination message as a kubelet does: the log's last 4096 bytes at most."""

from __future__ import annotations

from pathlib import Path

from stopline_local.kubelet import MAX_TERMINATION_MESSAGE, termination_message


def test_a_short_message_is_reported_whole_and_a_missing_log_as_nothing(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    assert termination_message(log) == ""
    log.write_text('{"uri": "s3://b/k"}\n')
    assert termination_message(log) == '{"uri": "s3://b/k"}\n'


def test_a_huge_log_is_read_only_to_its_last_4096_bytes(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.write_bytes(b"x" * (64 << 20) + b"end")  # 64 MiB: a process that wrote without bound
    message = termination_message(log)
    assert len(message) == MAX_TERMINATION_MESSAGE == 4096
    assert message.endswith("xend")
