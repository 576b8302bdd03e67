"""Downloads of the public data sets from their official addresses.

Downloads stream to a temporary file next to the destination, are checked against a SHA-256 when one
is known (or given), and zip archives are extracted into a temporary directory that is renamed into
place, so an interrupted download leaves nothing half-written. Without network access the error says
so and asks for a manual download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from mol_core.atomic import replace_directory
from mol_core.errors import ConfigError
from mol_train.data.errors import DownloadError

__all__ = ["DATASETS", "PublicDataset", "download"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublicDataset:
    """A public data set.

    Attributes:
        url: the official address.
        target: what the download leaves in the destination directory (a folder for zip archives).
        ratings: the ratings file inside the destination, relative to it.
        format: its format name for :func:`~mol_train.data.prepare`.
        sha256: the expected SHA-256 of the downloaded file, or ``None`` when not recorded.
        archive: whether the download is a zip archive holding ``target/``.
    """

    url: str
    target: str
    ratings: str
    format: str
    sha256: str | None = None
    archive: bool = True


# No SHA-256 is recorded: these could not be downloaded from this project's build machines to measure
# them. Pass sha256= to download() to check a known value.
DATASETS: dict[str, PublicDataset] = {
    "ml-100k": PublicDataset(
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "ml-100k",
        "ml-100k/u.data",
        "movielens-100k",
    ),
    "ml-1m": PublicDataset(
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "ml-1m",
        "ml-1m/ratings.dat",
        "movielens-dat",
    ),
    "ml-20m": PublicDataset(
        "https://files.grouplens.org/datasets/movielens/ml-20m.zip",
        "ml-20m",
        "ml-20m/ratings.csv",
        "movielens-csv",
    ),
    "amazon-books": PublicDataset(
        "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Books.csv",
        "ratings_Books.csv",
        "ratings_Books.csv",
        "amazon-csv",
        archive=False,
    ),
}
"""The data sets :func:`download` knows, by name."""


def download(
    name: str,
    dest: str | os.PathLike[str],
    *,
    url: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    overwrite: bool = False,
) -> Path:
    """Downloads a public data set into ``dest`` and returns the path of its ratings file.

    Args:
        name: one of :data:`DATASETS` (``ml-100k``, ``ml-1m``, ``ml-20m``, ``amazon-books``).
        dest: the directory to download into (created if missing).
        url: another address serving the same file (a mirror); default the official one.
        sha256: the expected SHA-256 of the downloaded file; default the recorded one, if any.
        timeout: seconds to wait for the server.
        overwrite: download again even when the data set is already in ``dest``.

    Returns:
        The ratings file, e.g. ``dest/ml-1m/ratings.dat`` (see :attr:`PublicDataset.format`).

    Raises:
        ConfigError: an unknown name.
        DownloadError: no network, an HTTP error, a checksum mismatch or a bad archive; the message
            says to download the file by hand and pass its path.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    source = url or spec.url
    expected = (sha256 or spec.sha256 or "").lower() or None
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    final = root / spec.target
    if final.exists() and not overwrite:
        logger.info("%s is already in %s; not downloading it again", name, final)
        return root / spec.ratings
    handle, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=root)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            digest = _fetch(name, source, out, timeout)
        if expected is not None and digest != expected:
            raise DownloadError(
                f"{name} from {source} has SHA-256 {digest}, expected {expected}: the file is corrupt or has "
                "changed; download it by hand, check it, and pass its path"
            )
        if spec.archive:
            _extract(name, source, tmp, root, spec.target, overwrite)
        else:
            _replace(tmp, final, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("downloaded %s into %s", name, final)
    return root / spec.ratings


def _fetch(name: str, url: str, out: BinaryIO, timeout: float) -> str:
    """Streams ``url`` into the binary file ``out``; returns the SHA-256 hex digest."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                digest.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadError(
            f"could not download {name} from {url}: {reason}; download it by hand and pass its path "
            "(machines without internet access cannot download it)"
        ) from error
    return digest.hexdigest()


def _extract(name: str, url: str, archive: Path, root: Path, target: str, overwrite: bool) -> None:
    """Extracts ``archive`` (holding ``target/``) into ``root/target`` through a temporary directory."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.namelist():
                    path = PurePosixPath(member)
                    if path.is_absolute() or ".." in path.parts:
                        raise DownloadError(f"{name} from {url}: the archive has an unsafe member {member!r}")
                zipped.extractall(staging)
        except zipfile.BadZipFile as error:
            raise DownloadError(
                f"{name} from {url} is not a valid zip archive ({error}); "
                "download it by hand and pass its path"
            ) from None
        if not (staging / target).is_dir():
            raise DownloadError(
                f"{name} from {url}: the archive has no folder {target!r}; is it the right file?"
            )
        _replace(staging / target, root / target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(source: Path, final: Path, overwrite: bool) -> None:
    """Renames ``source`` to ``final``; an existing ``final`` is replaced only when ``overwrite``."""
    if final.exists() and overwrite:
        replace_directory(source, final)
        return
    os.rename(source, final)
