"""Read what an offline W&B run wrote, without W&B's servers.

An offline run keeps its records in ``run-<id>.wandb``: a 7-byte header (":W&B", magic, version)
then 32 KiB blocks of LevelDB-log records (crc32, length, type; a record may be split in
FIRST/MIDDLE/LAST pieces), each piece of a protobuf ``Record`` that wandb ships.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    records, pieces, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # the rest of a block too short for a header
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        if kind == 0:  # zero padding up to the end of the block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if pos + length > len(data):  # the writer is still writing this record
            break
        pieces += data[pos : pos + length]
        pos += length
        if kind in (_FULL, _LAST):
            records.append(pieces)
            pieces = b""
    return records


def read_offline_run(run_dir: Path, wait_s: float = 30.0) -> dict[str, Any]:
    """{"config": {...}, "history": [{key: value}, ...], "summary": {...}, "exit_code": int}.

    ``exit_code`` is what ``wandb.finish`` recorded, None when the run was never finished.
    W&B's writer is a separate process that may still be flushing when ``wandb.finish`` (or
    the training process) returns, so this waits up to ``wait_s`` for the exit record, which
    is written last, reading again while the file ends in a record half written.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            result = _parse(run_dir)
        except DecodeError:  # a record read half written: read again, unless time is up
            if time.monotonic() >= deadline:
                raise
        else:
            if result["exit_code"] is not None or time.monotonic() >= deadline:
                return result
        time.sleep(0.2)


def _parse(run_dir: Path) -> dict[str, Any]:
    (log_file,) = run_dir.glob("run-*.wandb")
    result: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "exit_code": None}
    for raw in _records(log_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            result["history"].append(
                {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "summary":
            for item in record.summary.update:
                result["summary"]["/".join(item.nested_key) or item.key] = json.loads(
                    item.value_json
                )
        elif kind == "exit":
            result["exit_code"] = record.exit.exit_code
        elif kind in ("config", "run"):
            updates = record.config.update if kind == "config" else record.run.config.update
            for item in updates:
                result["config"][item.key] = json.loads(item.value_json)
    return result
