"""Read a remote GGUF's header with HTTP Range requests: never its weights.

The first request asks for INITIAL_BYTES; while the header parser says the bytes end inside the
header (:class:`~omni_place.errors.TruncatedHeaderError`) the next request fetches the following
bytes, doubling the prefix (by half past GROW_SLOWER_AT) up to MAX_HEADER_BYTES. A shard's header
is ~20 KiB (tensor infos) to a few MiB (the first shard's 129k-token vocabulary: ~5 MiB), so
one to five requests per shard, never more than twice the header's bytes. A server that ignores
Range (200 instead of 206) is refused before its body is read.

HTTP goes through huggingface_hub's shared client (``huggingface_hub.utils.get_session()``):
its proxies, certificates and offline mode (HF_HUB_OFFLINE) apply to every source.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import GGUFFormatError, InvalidArgumentError, TruncatedHeaderError
from ..gguf import parse_header_prefix
from .cache import write_bytes

INITIAL_BYTES = 512 << 10  # the header of a shard past the first (tensor infos only) is ~20 KiB
GROW_SLOWER_AT = 4 << 20  # the prefix doubles up to here, then grows by half: at most 1.5x a big header
MAX_HEADER_BYTES = 64 << 20  # 10x the largest real header; a bigger one is not a model file
MAX_PARALLEL = 8
TIMEOUT_S = 30.0
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+)", re.ASCII)


@dataclass(frozen=True)
class RemoteHeader:
    """A header read from a URL: its bytes (up to the tensor data), the file's size and
    validators, and how many bytes the reads took."""

    url: str
    header: bytes
    file_size: int
    etag: str | None
    bytes_read: int


# What a non-2xx status means for the user: (status, headers) -> the error to raise.
ErrorMap = Callable[[int, Mapping[str, str]], Exception]


def http_error(url: str) -> ErrorMap:
    """Errors of a plain URL: not found, access refused, anything else."""
    def error(status: int, headers: Mapping[str, str]) -> Exception:
        if status in (401, 403):
            return InvalidArgumentError(f"{url}: access refused (HTTP {status})",
                                        hint="the server wants credentials; download the file and pass its path")
        if status == 404:
            return InvalidArgumentError(f"{url}: not found (HTTP 404)", hint="check the URL")
        return InvalidArgumentError(f"{url}: HTTP {status}", hint="try again later, or download the file")
    return error


def _session() -> Any:
    from huggingface_hub.utils import get_session

    return get_session()


def _connection_error(url: str, err: Exception) -> InvalidArgumentError:
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return InvalidArgumentError(f"{url}: not in the header cache and HF_HUB_OFFLINE is set",
                                    hint="unset HF_HUB_OFFLINE once so omni-place can read and cache the header")
    return InvalidArgumentError(f"{url}: cannot connect ({type(err).__name__}: {err})",
                                hint="check the network, the URL and any proxy settings (HTTPS_PROXY)")


def _get_range(url: str, headers: Mapping[str, str], start: int, end: int,
               on_error: ErrorMap) -> tuple[bytes, int, str | None]:
    """Bytes ``start..end`` (inclusive) of ``url``, the file's total size and its ETag."""
    import httpx2

    from huggingface_hub.errors import OfflineModeIsEnabled

    want = end - start + 1
    req = {**headers, "Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
    try:
        with _session().stream("GET", url, headers=req, timeout=TIMEOUT_S, follow_redirects=True) as r:
            cr = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", "").strip())
            if r.status_code == 416 and cr:  # asked past the end: the file is shorter than start
                return b"", int(cr[3]), r.headers.get("ETag")
            if r.status_code == 200:
                size = r.headers.get("Content-Length")
                raise InvalidArgumentError(
                    f"{url}: the server ignores HTTP Range requests, so reading the header would download "
                    f"the whole file" + (f" ({int(size) / 2**30:.1f} GiB)" if size and size.isdigit() else ""),
                    hint="download the file (or its first shard) and pass its path")
            if r.status_code >= 300:
                raise on_error(r.status_code, r.headers)
            if r.status_code != 206 or not cr or cr[1] is None or int(cr[1]) != start:
                raise InvalidArgumentError(f"{url}: answered a Range request with HTTP {r.status_code} "
                                           f"and Content-Range {r.headers.get('Content-Range')!r}",
                                           hint="the server does not serve byte ranges properly; download the file")
            chunks, got = [], 0
            for chunk in r.iter_bytes():
                chunks.append(chunk[: want - got])
                got += len(chunks[-1])
                if got >= want:
                    break  # a server sending more than asked is cut off, not read to the end
            return b"".join(chunks), int(cr[3]), r.headers.get("ETag")
    except (httpx2.HTTPError, OfflineModeIsEnabled, OSError) as err:
        raise _connection_error(url, err) from None


def probe(url: str, headers: Mapping[str, str], on_error: ErrorMap) -> tuple[int, str | None]:
    """The size and ETag of the file at ``url``, from a one-byte Range request."""
    _, size, etag = _get_range(url, headers, 0, 0, on_error)
    return size, etag


def read_remote_header(url: str, headers: Mapping[str, str], on_error: ErrorMap, shard: int = 0) -> RemoteHeader:
    """The header of the GGUF at ``url`` (its bytes up to the tensor data), by Range requests."""
    buf = bytearray()
    want = INITIAL_BYTES
    etag = None
    while True:
        chunk, size, etag = _get_range(url, headers, len(buf), want - 1, on_error)
        buf += chunk
        try:
            h = parse_header_prefix(bytes(buf), url, size, shard)
            return RemoteHeader(url, bytes(buf[: min(h.data_offset, len(buf))]), size, etag, len(buf))
        except TruncatedHeaderError as err:
            if len(buf) >= size or not chunk:
                raise GGUFFormatError(f"{url}: the file ends inside its GGUF header ({size} bytes)",
                                      hint="the upload is incomplete or this is not a GGUF file") from None
            if want >= MAX_HEADER_BYTES:
                raise GGUFFormatError(f"{url}: the GGUF header is longer than {MAX_HEADER_BYTES >> 20} MiB "
                                      f"({err.message})", hint="this is not a model file omni-place can plan") from None
            want = min(want * 2 if want < GROW_SLOWER_AT else want * 3 // 2, MAX_HEADER_BYTES, size)


def read_headers(urls: Sequence[str], headers: Mapping[str, str], on_error: ErrorMap) -> list[RemoteHeader]:
    """Every shard's header, read in parallel, in the order of ``urls``."""
    if len(urls) == 1:
        return [read_remote_header(urls[0], headers, on_error)]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(urls))) as pool:
        return list(pool.map(lambda iu: read_remote_header(iu[1], headers, on_error, iu[0]), enumerate(urls)))


def store_headers(folder: Path, names: Sequence[str], read: Sequence[RemoteHeader]) -> Path:
    """Write each header as a header-only GGUF named like its shard; the first shard's path. The
    first shard is written last: its presence means the whole set is there."""
    for name, h in list(zip(names, read))[::-1]:
        write_bytes(folder / name, h.header)
    return folder / names[0]


__all__ = ["INITIAL_BYTES", "MAX_HEADER_BYTES", "RemoteHeader", "http_error", "probe", "read_headers",
           "read_remote_header", "store_headers"]
