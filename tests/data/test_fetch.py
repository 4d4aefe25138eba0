"""Fetching a Debian data package without root, with a stand-in for apt-get and dpkg-deb (no network)."""

import subprocess
from pathlib import Path

import pytest

from selfmodels.data import fetch, images
from selfmodels.errors import UserError

MEMBER = images.FASHION_MNIST_PACKAGE_DIR
PACKAGE = images.FASHION_MNIST_PACKAGE


class FakeApt:
    """Answers ``apt-get download`` / ``apt-get update`` / ``dpkg-deb -x`` like the real tools would;
    ``lists_empty`` makes ``apt-get download`` fail as with empty package lists until ``apt-get update``."""

    def __init__(self, lists_empty: bool = False):
        self.lists_empty = lists_empty
        self.calls: list[list[str]] = []

    def __call__(self, command, cwd, capture_output, text):
        self.calls.append(list(command))
        ok = subprocess.CompletedProcess(command, 0, "", "")
        if command[:2] == ["apt-get", "update"]:
            self.lists_empty = False
            return ok
        if command[:2] == ["apt-get", "download"]:
            if self.lists_empty:
                return subprocess.CompletedProcess(command, 100, "", f"E: Unable to locate package {command[2]}")
            (Path(cwd) / f"{command[2]}_1.0_all.deb").write_bytes(b"deb")
            return ok
        if command[:2] == ["dpkg-deb", "-x"]:
            target = Path(command[3]) / MEMBER
            target.mkdir(parents=True)
            for pair in images.FASHION_MNIST_FILES.values():
                for name in pair:
                    (target / name).write_bytes(b"idx")
            return ok
        raise AssertionError(f"unexpected command {command}")


def test_download_unpack_and_move_into_place(tmp_path):
    apt = FakeApt()
    dest = fetch.fetch_deb_directory(PACKAGE, MEMBER, tmp_path / "cache" / "fashion-mnist", runner=apt, is_root=False)
    assert images.find_fashion_mnist([dest]) == dest
    assert [c[:2] for c in apt.calls] == [["apt-get", "download"], ["dpkg-deb", "-x"]]  # no root needed
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fashion-mnist"]  # the temporary directory is gone


def test_empty_apt_lists_need_root_for_apt_get_update(tmp_path):
    with pytest.raises(UserError, match="sudo apt-get update"):
        fetch.fetch_deb_directory(PACKAGE, MEMBER, tmp_path / "fm", runner=FakeApt(lists_empty=True), is_root=False)
    assert not (tmp_path / "fm").exists()  # nothing half-written
    apt = FakeApt(lists_empty=True)
    fetch.fetch_deb_directory(PACKAGE, MEMBER, tmp_path / "fm", runner=apt, is_root=True)
    assert [c[:2] for c in apt.calls] == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"], ["dpkg-deb", "-x"]]


def test_fetch_fashion_mnist_only_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path))
    if images.find_fashion_mnist() is not None:
        pytest.skip(f"Fashion-MNIST is installed system-wide in {images.find_fashion_mnist()}: nothing would be fetched")
    apt = FakeApt()
    directory, fetched = fetch.fetch_fashion_mnist(runner=apt, is_root=False)
    assert fetched and directory == tmp_path / "fashion-mnist"
    assert fetch.fetch_fashion_mnist(runner=apt, is_root=False) == (directory, False)
    assert len(apt.calls) == 2  # the second call downloaded nothing


def test_a_system_without_apt_is_a_clear_message(tmp_path):
    def missing(command, **kwargs):
        raise FileNotFoundError(command[0])

    with pytest.raises(UserError, match="not a Debian-based system"):
        fetch.fetch_deb_directory(PACKAGE, MEMBER, tmp_path / "fm", runner=missing, is_root=False)
