"""The offline W&B log reader of the tests: whole records, and none read half written."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.wandb_records import _FULL, _records


def _piece(payload: bytes, kind: int = _FULL) -> bytes:
    return struct.pack("<IHB", 0, len(payload), kind) + payload


def test_a_record_still_being_written_is_not_read(tmp_path: Path) -> None:
    log = tmp_path / "run-x.wandb"
    header = b":W&B" + b"\x00\x00\x00"
    whole = header + _piece(b"first") + _piece(b"second record")
    log.write_bytes(whole)
    assert _records(log) == [b"first", b"second record"]
    log.write_bytes(whole[:-4])  # the writer has not finished the second record
    assert _records(log) == [b"first"]
