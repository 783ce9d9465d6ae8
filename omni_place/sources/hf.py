"""``hf:OWNER/REPO[:QUANT|/PATH.gguf][@REVISION]``: a model on the Hugging Face Hub, planned from
its shards' headers (read by HTTP Range, a few MB each) without downloading weights.

Through huggingface_hub, so HF_ENDPOINT (read when a model is resolved), HF_TOKEN or the token
of ``hf auth login``, HF_HUB_OFFLINE and the hub's own download cache apply. Files already
downloaded in that cache are read in place.

Cache policy (``<cache>/sources/hf/OWNER--REPO``): headers and the file listing are kept per
commit and never change. A commit revision (40 hex digits) already seen needs no network at
all. A branch or tag (``main`` by default) is re-listed on every run -- one small request that
learns its current commit, so a new upload is never planned from stale headers; when that commit's
headers are cached nothing else is fetched. Offline (HF_HUB_OFFLINE=1) a branch resolves to the
commit it had last time.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from ..errors import InvalidArgumentError
from ..validate import safe_file_name
from .cache import cache_root, read_record, subdir, write_record
from .quants import FileGroup, group_files, pick_group, shard_names
from .remote import ErrorMap, read_headers, store_headers

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_SPEC = re.compile(rf"hf:(?P<repo>{_NAME}/{_NAME})(?::(?P<quant>[A-Za-z0-9_-]+)|/(?P<path>[^@]+\.gguf))?"
                   r"(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9._/-]{0,255}))?", re.ASCII | re.IGNORECASE)
_COMMIT = re.compile(r"[0-9a-f]{40}", re.ASCII)
DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class HfSpec:
    """A parsed ``hf:`` model reference."""

    repo: str
    quant: str | None = None
    path: str | None = None
    revision: str = DEFAULT_REVISION

    def __str__(self) -> str:
        what = f":{self.quant}" if self.quant else (f"/{self.path}" if self.path else "")
        return f"hf:{self.repo}{what}" + (f"@{self.revision}" if self.revision != DEFAULT_REVISION else "")

    def with_quant(self, quant: str) -> HfSpec:
        return HfSpec(self.repo, quant, None, self.revision)


def parse_hf(spec: str) -> HfSpec:
    m = _SPEC.fullmatch(spec)
    path = m["path"] if m else None
    if m is None or (path is not None and any(p in ("", ".", "..") for p in path.split("/"))):
        raise InvalidArgumentError(f"{spec!r} is not a Hub model reference",
                                   hint="hf:OWNER/REPO, hf:OWNER/REPO:Q4_K_M, hf:OWNER/REPO/FILE.gguf, "
                                        "each optionally @REVISION")
    return HfSpec(m["repo"], m["quant"], path, m["rev"] or DEFAULT_REVISION)


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache() -> str:
    """huggingface_hub's download cache (HF_HUB_CACHE, else HF_HOME/hub), read when used."""
    from huggingface_hub import constants

    home = os.environ.get("HF_HOME")
    return os.environ.get("HF_HUB_CACHE") or (os.path.join(home, "hub") if home else constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _token_hint(repo: str) -> str:
    return (f"if it is private or gated, accept its terms at {endpoint()}/{repo} and set HF_TOKEN "
            "(or run `hf auth login`)")


def _hub_error(spec: HfSpec, err: Exception) -> InvalidArgumentError:
    """A huggingface_hub exception as one line with a hint."""
    from huggingface_hub import errors as e

    if isinstance(err, e.GatedRepoError):  # a subclass of RepositoryNotFoundError: first
        return InvalidArgumentError(f"{spec.repo} is a gated repository and this token has no access",
                                    hint=_token_hint(spec.repo))
    if isinstance(err, e.RevisionNotFoundError):
        return InvalidArgumentError(f"{spec.repo} has no revision {spec.revision!r}",
                                    hint="give a branch, tag or commit of the repository after @")
    if isinstance(err, e.RepositoryNotFoundError):
        return InvalidArgumentError(f"{spec.repo}: no such repository on {endpoint()} (or it is private)",
                                    hint=_token_hint(spec.repo))
    if isinstance(err, e.OfflineModeIsEnabled):
        return InvalidArgumentError(f"{spec} is not in the header cache and HF_HUB_OFFLINE is set",
                                    hint="unset HF_HUB_OFFLINE once so omni-place can read and cache its headers")
    status = getattr(getattr(err, "response", None), "status_code", None)
    return InvalidArgumentError(f"{spec}: the Hub answered {f'HTTP {status}' if status else type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}".rstrip(": "),
                                hint=f"check the network and {endpoint()}; try again later")


def _resolve_error(spec: HfSpec) -> ErrorMap:
    def error(status: int, headers: Mapping[str, str]) -> Exception:
        code = headers.get("X-Error-Code", "")
        if code == "GatedRepo" or status in (401, 403):
            return InvalidArgumentError(f"{spec.repo}: access to the files refused (HTTP {status}"
                                        + (", gated repository)" if code == "GatedRepo" else ")"),
                                        hint=_token_hint(spec.repo))
        if status == 404:
            return InvalidArgumentError(f"{spec}: a listed file is not found (HTTP 404)",
                                        hint="the repository changed while reading; run again")
        return InvalidArgumentError(f"{spec}: the Hub answered HTTP {status}", hint="try again later")
    return error


def _repo_dir(spec: HfSpec) -> Path:
    owner, name = spec.repo.split("/")
    return subdir(cache_root(), "hf", f"{owner}--{name}")


def _listing(spec: HfSpec) -> tuple[str, list[str]]:
    """The commit of the spec's revision and the repository's file paths at it."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub import errors as e

    root = _repo_dir(spec)
    ref_file = subdir(root, "refs") / (re.sub(r"[^A-Za-z0-9._-]", "_", spec.revision) + ".json")
    commit = spec.revision if _COMMIT.fullmatch(spec.revision) else None
    if commit is None and offline():
        commit = (read_record(ref_file) or {}).get("commit")
    if isinstance(commit, str) and _COMMIT.fullmatch(commit):
        rec = read_record(subdir(root, commit) / "listing.json")
        if rec is not None and isinstance(rec.get("files"), list):
            return commit, [str(f) for f in rec["files"]]
    if offline():
        raise _hub_error(spec, e.OfflineModeIsEnabled(str(spec)))
    try:
        info = HfApi(endpoint=endpoint()).model_info(spec.repo, revision=spec.revision)
    except (e.HfHubHTTPError, e.OfflineModeIsEnabled, httpx2.HTTPError, OSError) as err:
        raise _hub_error(spec, err) from None
    commit = info.sha
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise InvalidArgumentError(f"{spec}: the Hub gave no commit for revision {spec.revision!r}",
                                   hint=f"check HF_ENDPOINT ({endpoint()})")
    files = sorted(s.rfilename for s in info.siblings or [])
    write_record(subdir(root, commit) / "listing.json", {"repo": spec.repo, "commit": commit, "files": files})
    if commit != spec.revision:
        write_record(ref_file, {"revision": spec.revision, "commit": commit})
    return commit, files


def select(spec: HfSpec, files: list[str]) -> FileGroup:
    """The files of the model ``spec`` names among the repository's ``files``."""
    if spec.path is not None:
        names = shard_names(re.sub(r"-\d{5}-of-(\d{5})\.gguf$", r"-00001-of-\1.gguf", spec.path))
        missing = [n for n in names if n not in files]
        if missing:
            raise InvalidArgumentError(f"{spec}: the repository has no file {missing[0]}",
                                       hint=f"its GGUF files: {', '.join(g.first for g in group_files(files))}")
        return FileGroup(None, tuple(names))
    return pick_group(group_files(files), spec.quant, str(HfSpec(spec.repo, revision=spec.revision)))


def list_quants(spec: str | HfSpec) -> list[str]:
    """The quant tags a repository offers, worst to best (untagged files by path)."""
    s = parse_hf(spec) if isinstance(spec, str) else spec
    _, files = _listing(s)
    return list(dict.fromkeys(g.tag or g.first for g in group_files(files)))


def _in_hub_cache(spec: HfSpec, commit: str, group: FileGroup) -> Path | None:
    """The first shard in huggingface_hub's download cache when every shard is there in full."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(spec.repo, f, cache_dir=hub_cache(), revision=commit) for f in group.files]
    if all(isinstance(p, str) for p in found):
        return Path(str(found[0]))
    return None


def resolve_hf(spec_text: str) -> Path:
    """A local GGUF path for an ``hf:`` reference: the header-only copy in the private cache
    (fetched on first use), or the file in huggingface_hub's download cache."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    spec = parse_hf(spec_text)
    commit, files = _listing(spec)
    group = select(spec, files)
    folder = PurePosixPath(group.first).parent
    where = subdir(_repo_dir(spec), commit, *(["_"] if str(folder) == "." else folder.parts))
    names = [safe_file_name(PurePosixPath(f).name) for f in group.files]
    if all((where / n).is_file() for n in names):
        return where / names[0]
    local = _in_hub_cache(spec, commit, group)
    if local is not None:
        return local
    if offline():
        from huggingface_hub import errors as e

        raise _hub_error(spec, e.OfflineModeIsEnabled(str(spec)))
    urls = [hf_hub_url(spec.repo, f, revision=commit, endpoint=endpoint()) for f in group.files]
    headers: dict[str, Any] = build_hf_headers()
    return store_headers(where, names, read_headers(urls, headers, _resolve_error(spec)))


__all__ = ["HfSpec", "endpoint", "list_quants", "offline", "parse_hf", "resolve_hf", "select"]
