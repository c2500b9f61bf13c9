"""Model stores: where versions live, named by a local directory or a URL.

A store holds versions as a model directory does: one folder per version with its manifest,
and the files CURRENT and PREVIOUS naming versions. A local directory is used in place. A URL
(`s3://bucket/prefix`, or any other fsspec scheme) is a remote store: the training job
uploads a version (its manifest last) and then points CURRENT at it; a worker copies the
version CURRENT names into a local cache, checks every file against the manifest's sha256,
and only then points the cache's own CURRENT at it. A failed copy or check leaves the cache
as it was, so the worker keeps serving the version it has.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .artifact import (
    ArtifactError,
    check_version,
    current_version,
    doomed_versions,
    prune_versions,
    set_current,
    verify_files,
)

log = logging.getLogger(__name__)


def is_remote(location: str) -> bool:
    """Whether `location` names a remote store (a URL other than file://)."""
    return "://" in location and not location.startswith("file://")


def locate(model_dir: str, cache: str) -> tuple[Path, RemoteStore | None]:
    """Where versions are used from (the directory itself, or for a remote store the local
    `cache` its versions are copied into), and the remote store (None: a local directory)."""
    if is_remote(model_dir):
        return Path(cache), RemoteStore(model_dir)
    return Path(model_dir.removeprefix("file://")), None


class RemoteStore:
    """A store behind an fsspec URL. Credentials and endpoints come from the file system's
    own configuration (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL...)."""

    def __init__(self, url: str):
        import fsspec  # type: ignore[import-untyped]

        self.url = url.rstrip("/")
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise ArtifactError(f"model store {url}: {exc}") from None
        self.root = root.rstrip("/")

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _read_name(self, name: str) -> str | None:
        try:
            text = self.fs.cat_file(self._path(name)).decode("utf-8", "replace").strip()
        except FileNotFoundError:
            return None
        return check_version(text) if text else None

    def current(self) -> str | None:
        return self._read_name("CURRENT")

    def previous(self) -> str | None:
        return self._read_name("PREVIOUS")

    def versions(self) -> list[str]:
        """Every version whose manifest has been uploaded."""
        found = self.fs.glob(self._path("*", "manifest.json"))
        return sorted(str(p).rstrip("/").split("/")[-2] for p in found)

    def manifest_text(self, version: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(check_version(version), "manifest.json")))

    def upload(self, directory: Path) -> str:
        """Copy a version directory into the store, its manifest last (a version whose
        manifest is there is complete). Returns the version's name."""
        version = check_version(directory.name)
        verify_files(directory)
        files = sorted(p for p in directory.iterdir() if p.is_file())
        for file in sorted(files, key=lambda p: p.name == "manifest.json"):
            self.fs.put_file(str(file), self._path(version, file.name))
        log.info("uploaded model %s to %s (%d files)", version, self.url, len(files))
        return version

    def set_current(self, version: str) -> None:
        """Point CURRENT at an uploaded version; the one it named before goes to PREVIOUS."""
        if not self.fs.exists(self._path(check_version(version), "manifest.json")):
            raise ArtifactError(f"no model version {version!r} in {self.url}")
        before = self.current()
        if before is not None and before != version:
            self.fs.pipe_file(self._path("PREVIOUS"), f"{before}\n".encode())
        self.fs.pipe_file(self._path("CURRENT"), f"{version}\n".encode())

    def prune(self, keep: int) -> list[str]:
        """Delete the versions a retention of `keep` gives up (`doomed_versions`), each one's
        manifest first, so that a half-deleted version is never taken for a complete one."""
        doomed = doomed_versions(self.versions(), keep, self.current(), self.previous())
        for version in doomed:
            self.fs.rm_file(self._path(version, "manifest.json"))
            self.fs.rm(self._path(version), recursive=True)
        if doomed:
            log.info("deleted old model versions %s from %s", ", ".join(doomed), self.url)
        return doomed

    def download(self, version: str, cache: Path) -> Path:
        """Copy a version into `cache` and check it; a version already there is kept."""
        target = cache / check_version(version)
        if (target / "manifest.json").exists():
            return target
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".partial-{version}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            names = self.fs.ls(self._path(version), detail=False)
            if not names:
                raise ArtifactError(f"no model version {version!r} in {self.url}")
            for name in names:
                self.fs.get_file(name, str(partial / str(name).rstrip("/").split("/")[-1]))
            verify_files(partial)
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target


def mirror(store: RemoteStore, cache: Path, keep: int = 0) -> str | None:
    """Bring the version the store's CURRENT names into `cache` (`take`). Returns that
    version (None: the store has none yet)."""
    version = store.current()
    if version is not None:
        take(store, version, cache, keep)
    return version


def take(store: RemoteStore, version: str, cache: Path, keep: int = 0) -> None:
    """Copy `version` into `cache`, checked, and point the cache's CURRENT at it; then delete
    the cache's versions a retention of `keep` gives up (0: none). On any failure the cache's
    CURRENT is unchanged and the error is raised (`ArtifactError`: the version itself is bad)."""
    if current_version(cache) != version:
        store.download(version, cache)
        set_current(cache, version)
        log.info("model %s copied from %s into %s", version, store.url, cache)
        prune_versions(cache, keep)
