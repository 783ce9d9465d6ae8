"""Every error a user can see, in one place.

Each error carries a one-line message (what went wrong, with numbers and paths), a hint (how to
fix it) and the CLI exit code. The CLI prints ``error: <message>`` and ``hint: <hint>`` and exits
with ``exit_code``; library callers catch :class:`OmniPlaceError`.
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_NOTHING_FITS = 3
EXIT_ENGINE_DISAGREES = 4
MAX_MESSAGE = 1000  # characters of a message or hint; a longer one (an echoed hostile value) keeps both ends


def _bounded(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    head, tail = MAX_MESSAGE * 2 // 3, MAX_MESSAGE // 3 - 40
    return f"{text[:head]} [... {len(text) - head - tail} characters ...] {text[-tail:]}"


class OmniPlaceError(Exception):
    """Base class: a user-facing error with a hint and a CLI exit code."""

    exit_code = EXIT_BAD_INPUT
    default_hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.message = message
        self.hint = _bounded(hint if hint is not None else self.default_hint)

    def __str__(self) -> str:
        return self.message


class GGUFFormatError(OmniPlaceError, ValueError):
    """The file is not a GGUF file we can read (bad magic, version, truncated or hostile header)."""

    default_hint = "check that the file is a complete GGUF v2/v3 header (re-download the first shard)"


class TruncatedHeaderError(GGUFFormatError):
    """The bytes end inside the GGUF header (a cut download; a remote reader fetches more)."""


class MissingShardError(OmniPlaceError, FileNotFoundError):
    """A split GGUF names shards that are not on disk."""

    default_hint = "download every *-NNNNN-of-NNNNN.gguf shard into the same folder"


class UnsupportedModelError(OmniPlaceError):
    """The architecture or a hyper-parameter is outside what the memory model covers."""

    default_hint = "see `omni-place inspect --help` for the covered architectures"


class ClusterError(OmniPlaceError):
    """A cluster file, preset or device description is invalid."""

    default_hint = "see `omni-place devices --help` for the cluster file schema"


class InvalidArgumentError(OmniPlaceError):
    """A command-line or API argument is out of range or malformed."""

    default_hint = "see the command's --help for the accepted values"


class NothingFitsError(OmniPlaceError):
    """No placement satisfies the memory limits."""

    exit_code = EXIT_NOTHING_FITS
    default_hint = "lower --ctx, use a quantized --kv-type, add devices or memory, or lower the margin"


class NativeCoreError(OmniPlaceError):
    """The compiled core is missing or returned an error status."""

    default_hint = "reinstall with `pip install .` so the C core is compiled"


class LibLlamaNotFoundError(OmniPlaceError):
    """No libllama could be loaded."""

    default_hint = (
        "set OMNI_PLACE_LIBLLAMA=/path/to/libllama.so (file or folder), or "
        'CMAKE_ARGS="-DGGML_RPC=on" pip install llama-cpp-python'
    )


class LibLlamaVersionError(OmniPlaceError):
    """The libllama found has a struct layout omni_place does not know."""

    default_hint = "use a llama.cpp build whose llama_model_params layout omni_place supports (see `omni-place env`)"


class EngineError(OmniPlaceError):
    """The engine failed to load the model or create a context."""


class EngineMismatchError(OmniPlaceError):
    """The engine placed tensors or sized buffers differently from the plan."""

    exit_code = EXIT_ENGINE_DISAGREES
