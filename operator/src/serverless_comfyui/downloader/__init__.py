"""Resumable, verified model downloads (`python -m serverless_comfyui.downloader`)."""

from serverless_comfyui.downloader.core import (
    DEFAULT_TOKEN_HOSTS,
    AuthError,
    ChecksumError,
    Downloader,
    DownloadError,
    DownloadResult,
    ManifestError,
    NotFoundError,
    download_models,
    load_manifest,
    print_event,
    read_token,
)

__all__ = [
    "DEFAULT_TOKEN_HOSTS",
    "AuthError",
    "ChecksumError",
    "DownloadError",
    "DownloadResult",
    "Downloader",
    "ManifestError",
    "NotFoundError",
    "download_models",
    "load_manifest",
    "print_event",
    "read_token",
]
