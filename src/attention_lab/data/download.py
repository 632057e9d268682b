"""A data set's missing files, fetched whole or not at all, with one message when they cannot be."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from attention_lab.errors import DataNotFoundError

log = logging.getLogger(__name__)


def download(url: str, destination: Path, timeout_s: float = 30.0) -> None:
    """Fetch ``url`` into ``destination``, via a partial file so a failed fetch leaves nothing."""
    partial = destination.with_name(destination.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        partial.write_bytes(response.read())
    partial.replace(destination)


def download_missing(files: Iterable[tuple[str, Path]], *, name: str, expected: str) -> None:
    """Download each ``(url, path)`` whose file is not there yet. One that cannot be had (no
    network, an unwritable folder: all ``OSError``) is one ``DataNotFoundError`` naming the
    data set (``name``), the file's folder, the ``expected`` files and the settings that point
    elsewhere."""
    for url, path in files:
        if path.is_file():
            continue
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            download(url, path)
            log.info("Downloaded %s", path)
        except OSError as err:  # URLError, timeouts and unwritable folders are all OSErrors
            raise DataNotFoundError(
                f"{name} is not complete in {folder.resolve()} ({path.name} is missing) and "
                f"could not be downloaded from {url} ({err}). Put the files {expected} there, "
                f"or point data.data_dir=... (or the DATA_DIR environment variable) at a "
                f"folder that has {folder.name}/."
            ) from err
