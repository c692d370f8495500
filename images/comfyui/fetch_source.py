"""Fetch a GitHub repository at a tag as a tarball and unpack it (used by the image builds).

    python fetch_source.py --repo comfyanonymous/ComfyUI --ref v0.8.0 --dest /opt/ComfyUI \
        [--sha256 HEX] [--url URL|PATH]

Only the standard library: the build stage needs no git and no curl. The archive's top folder
(`ComfyUI-0.8.0/`) is stripped; members that would land outside `--dest` (absolute paths, `..`,
links pointing out) are refused. With `--sha256` a different archive fails the build; without
it the digest is printed so that it can be pinned (images/versions.env). `--url` takes an
https:// or file:// URL or a local path (images/build.sh runs this on the host, so that a
machine without GitHub can point COMFYUI_SOURCE_URL at a copy of the archive).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath


def archive_url(repo: str, ref: str) -> str:
    return f"https://github.com/{repo}/archive/refs/tags/{ref}.tar.gz"


def source_url(location: str) -> str:
    """A URL for location: URLs stay as they are, a local path becomes a file:// URL."""
    if "://" in location:
        return location
    path = Path(location).expanduser().resolve()
    if not path.is_file():
        raise SystemExit(f"error: {location}: no such file")
    return path.as_uri()


def download(url: str, target: Path, attempts: int = 4) -> str:
    """Download url to target; returns the SHA-256 of what was written."""
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            return digest.hexdigest()
        except OSError as exc:  # URLError and socket errors are OSErrors
            last = exc
            print(f"download failed (attempt {attempt}/{attempts}): {exc}", file=sys.stderr)
    raise SystemExit(f"error: cannot download {url}: {last}")


def _stripped(name: str) -> PurePosixPath | None:
    parts = PurePosixPath(name).parts[1:]
    return PurePosixPath(*parts) if parts else None


def extract(archive: Path, dest: Path) -> int:
    """Unpack archive into dest without its top folder; returns the number of members."""
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(archive, "r:*") as tar:
        members = []
        for member in tar.getmembers():
            relative = _stripped(member.name)
            if relative is None:
                continue
            if member.name.startswith("/") or ".." in relative.parts:
                raise SystemExit(f"error: unsafe path in archive: {member.name}")
            if member.issym() or member.islnk():
                target = PurePosixPath(member.linkname)
                if target.is_absolute() or ".." in target.parts:
                    raise SystemExit(f"error: link leaving the tree: {member.name}")
                if member.islnk():
                    linked = _stripped(member.linkname)
                    if linked is None:
                        raise SystemExit(f"error: bad hard link: {member.name}")
                    member.linkname = str(linked)
            member.name = str(relative)
            members.append(member)
        tar.extractall(dest, members=members, filter="data")
        count = len(members)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="owner/name on GitHub")
    parser.add_argument("--ref", required=True, help="a tag, e.g. v0.8.0")
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--sha256", default="", help="expected SHA-256 of the archive")
    parser.add_argument(
        "--url", default="", help="download from here (a URL or a local path) instead of GitHub"
    )
    args = parser.parse_args(argv)
    url = source_url(args.url) if args.url else archive_url(args.repo, args.ref)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "source.tar.gz"
        digest = download(url, archive)
        if args.sha256 and digest != args.sha256.lower():
            raise SystemExit(f"error: {url} has SHA-256 {digest}, expected {args.sha256}")
        if args.dest.exists() and any(args.dest.iterdir()):
            shutil.rmtree(args.dest)
        count = extract(archive, args.dest)
    print(f"{args.repo}@{args.ref}: {count} entries in {args.dest} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
