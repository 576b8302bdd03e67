"""download(): local file:// URLs and a patched urlopen stand in for the network (never reached)."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from mol_core.errors import ConfigError
from mol_train.data import DATASETS, DownloadError, download, load_movielens_dat


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def test_no_network_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> object:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    dest = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        download("ml-1m", dest)
    message = str(info.value)
    assert message.startswith(f"could not download ml-1m from {DATASETS['ml-1m'].url}: ")
    assert "Temporary failure in name resolution; download it by hand and pass its path" in message
    assert list(dest.iterdir()) == []  # no partial file


def test_unreachable_address(tmp_path: Path) -> None:
    missing = (tmp_path / "nowhere.zip").as_uri()
    with pytest.raises(
        DownloadError, match=r"could not download ml-100k from file:.*nowhere\.zip: .*by hand"
    ):
        download("ml-100k", tmp_path / "data", url=missing)
    assert list((tmp_path / "data").iterdir()) == []


def test_zip_is_extracted_checked_and_found(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": "1::2::5::10\n1::3::4::11\n", "ml-1m/README": "x"}
    )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "data"
    ratings = download("ml-1m", dest, url=archive.as_uri(), sha256=digest)
    assert ratings == dest / "ml-1m" / "ratings.dat"
    assert len(load_movielens_dat(ratings)) == 2
    assert sorted(p.name for p in dest.iterdir()) == ["ml-1m"]
    # Present already: no second download (the URL is not even opened).
    assert download("ml-1m", dest, url="file:///does/not/exist.zip") == ratings


def test_checksum_mismatch_and_bad_archives_leave_nothing(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": "1::2::5::10\n"})
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"has SHA-256 .* expected 00+: the file is corrupt"):
        download("ml-1m", dest, url=archive.as_uri(), sha256="0" * 64)
    not_zip = tmp_path / "fake.zip"
    not_zip.write_text("<html>moved</html>")
    with pytest.raises(DownloadError, match="is not a valid zip archive"):
        download("ml-1m", dest, url=not_zip.as_uri())
    wrong = _zip(tmp_path / "wrong.zip", {"other/ratings.dat": "1::2::5::10\n"})
    with pytest.raises(DownloadError, match="the archive has no folder 'ml-1m'"):
        download("ml-1m", dest, url=wrong.as_uri())
    unsafe = _zip(tmp_path / "unsafe.zip", {"../evil.txt": "x"})
    with pytest.raises(DownloadError, match="unsafe member"):
        download("ml-1m", dest, url=unsafe.as_uri())
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_plain_file_and_overwrite(tmp_path: Path) -> None:
    csv = tmp_path / "source.csv"
    csv.write_text("A,0001,5.0,10\n")
    dest = tmp_path / "data"
    path = download("amazon-books", dest, url=csv.as_uri())
    assert path.read_text() == "A,0001,5.0,10\n"
    csv.write_text("B,0002,4.0,11\n")
    assert download("amazon-books", dest, url=csv.as_uri()).read_text() == "A,0001,5.0,10\n"
    assert download("amazon-books", dest, url=csv.as_uri(), overwrite=True).read_text() == "B,0002,4.0,11\n"
    assert sorted(p.name for p in dest.iterdir()) == ["ratings_Books.csv"]


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown data set 'ml-2m'; expected one of ml-100k, ml-1m"):
        download("ml-2m", tmp_path)
