"""Model source URIs: parsing, download URLs, cache paths and file formats.

Pure: no network, no filesystem, no environment. Values that come from the environment (such as
`HF_ENDPOINT`, so that a Hugging Face mirror works) are passed in by the caller.

Accepted URIs:

- `hf://org/repo[/path/to/file][@revision]` (revision defaults to `main`)
- `modelscope://org/repo[/path/to/file][@revision]` (revision defaults to `master`, ModelScope's default branch)
- `ollama://name[:tag]`, where name may carry a namespace (`library/llama3`, `hf.co/org/repo`); tag defaults to
  `latest`
- `https://host/path/file` (and `http://`, which the manifest layer only allows with `allowInsecure`)
- `file:///absolute/path`, `file://./relative` and `file://../relative` (relative to the manifest's directory)

The revision always comes last, after the file: `hf://org/repo/model.gguf@v1.0`. A revision may contain `/`
(`@refs/pr/1`).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

HF_ENDPOINT = "https://huggingface.co"
MODELSCOPE_ENDPOINT = "https://modelscope.cn"
HF_DEFAULT_REVISION = "main"
MODELSCOPE_DEFAULT_REVISION = "master"
OLLAMA_DEFAULT_TAG = "latest"
SCHEMES = ("hf", "modelscope", "ollama", "https", "http", "file")

_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_OLLAMA_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_OLLAMA_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._+-]")
_MODEL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx")
_FORMATS = {".gguf": "gguf", ".safetensors": "safetensors", ".bin": "pytorch", ".pt": "pytorch",
            ".pth": "pytorch", ".onnx": "onnx"}


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source. Which fields are set depends on `scheme`.

    - `hf` / `modelscope`: `repo` ("org/repo"), `file` (path inside the repository, or None for a whole
      repository snapshot), `revision`; `single_file` is False for snapshots, which are not supported yet.
    - `ollama`: `name` and `tag`; `reference` is `name:tag`.
    - `https` / `http`: `url`.
    - `file`: `path`, absolute and normalised.
    """

    scheme: str
    uri: str
    repo: str | None = None
    file: str | None = None
    revision: str | None = None
    name: str | None = None
    tag: str | None = None
    url: str | None = None
    path: str | None = None
    single_file: bool = True

    @property
    def filename(self) -> str | None:
        """Last part of the file this source names, as written (not sanitised); None for Ollama and snapshots."""
        if self.scheme in ("hf", "modelscope"):
            return posixpath.basename(self.file) if self.file else None
        if self.scheme in ("https", "http"):
            return posixpath.basename(unquote(urlsplit(self.url or "").path))
        if self.scheme == "file":
            return posixpath.basename(self.path or "")
        return None

    @property
    def reference(self) -> str | None:
        """`name:tag` for Ollama sources (what `POST /api/pull` takes), None otherwise."""
        return f"{self.name}:{self.tag}" if self.scheme == "ollama" else None


def _fail(uri: str, why: str) -> ValueError:
    return ValueError(f"model source {uri!r}: {why}")


def parse_source(uri: str, base_dir: str) -> ModelSource:
    """Parse a model source URI; `base_dir` (the manifest's directory) anchors `file://./relative` paths.

    Raises ValueError with a message naming the URI and what is wrong with it.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("model source is empty: use hf://, modelscope://, ollama://, https:// or file://")
    if uri != uri.strip() or any(c.isspace() for c in uri):
        raise _fail(uri, "must not contain spaces")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise _fail(uri, "unknown scheme: use one of " + ", ".join(f"{s}://" for s in SCHEMES))
    if not rest:
        raise _fail(uri, "nothing after the scheme")
    if scheme in ("hf", "modelscope"):
        return _parse_repo(uri, scheme, rest)
    if scheme == "ollama":
        return _parse_ollama(uri, rest)
    if scheme in ("https", "http"):
        return _parse_url(uri, scheme)
    return _parse_file(uri, rest, base_dir)


def _check_segments(uri: str, segments: list[str], what: str) -> None:
    """Refuse empty, `.` and `..` path segments: a source never walks out of its repository."""
    for segment in segments:
        if segment in ("", ".", ".."):
            raise _fail(uri, f"{what} must not contain empty, '.' or '..' parts")


def _parse_repo(uri: str, scheme: str, rest: str) -> ModelSource:
    """`org/repo[/path/to/file][@revision]` for Hugging Face and ModelScope."""
    if "?" in rest or "#" in rest:
        raise _fail(uri, "query strings and fragments are not allowed")
    default = HF_DEFAULT_REVISION if scheme == "hf" else MODELSCOPE_DEFAULT_REVISION
    body, at, revision = rest.rpartition("@") if "@" in rest else (rest, "", default)
    if at and not revision:
        raise _fail(uri, "empty revision after '@'")
    if at and (not _REVISION.fullmatch(revision) or ".." in revision.split("/")):
        raise _fail(uri, f"{revision!r} is not a revision (a branch, tag or commit)")
    if at and revision.lower().endswith(_MODEL_SUFFIXES):
        raise _fail(uri, f"put the revision last: {scheme}://org/repo/file@revision")
    parts = body.split("/")
    if len(parts) < 2 or not parts[1]:
        raise _fail(uri, f"needs a repository: {scheme}://org/repo[/file][@revision]")
    for part in parts[:2]:
        if not _REPO_PART.fullmatch(part) or ".." in part:
            raise _fail(uri, f"{part!r} is not a valid organisation or repository name")
    _check_segments(uri, parts[2:], "the file path")
    file = "/".join(parts[2:]) or None
    return ModelSource(scheme, uri, repo=f"{parts[0]}/{parts[1]}", file=file, revision=revision,
                       single_file=file is not None)


def _parse_ollama(uri: str, rest: str) -> ModelSource:
    """`name[:tag]`, name possibly namespaced (`library/llama3`, `hf.co/org/repo`)."""
    name, colon, tag = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", OLLAMA_DEFAULT_TAG)
    if colon and not _OLLAMA_TAG.fullmatch(tag):
        raise _fail(uri, f"{tag!r} is not an Ollama tag")
    parts = name.split("/")
    _check_segments(uri, parts, "the model name")
    for part in parts:
        if not _OLLAMA_PART.fullmatch(part):
            raise _fail(uri, f"{part!r} is not a valid Ollama model name part")
    return ModelSource("ollama", uri, name=name, tag=tag)


def _parse_url(uri: str, scheme: str) -> ModelSource:
    """`https://host/path/file`: the file name is the last part of the path."""
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise _fail(uri, f"not a valid URL ({exc})") from None
    if not parts.hostname:
        raise _fail(uri, "the URL has no host")
    last = posixpath.basename(unquote(parts.path))
    if not last or last in (".", ".."):
        raise _fail(uri, "the URL must name a file (its path cannot end with '/')")
    return ModelSource(scheme, uri, url=uri)


def _parse_file(uri: str, rest: str, base_dir: str) -> ModelSource:
    """`file:///abs/path`, or `file://./rel` / `file://../rel` resolved against `base_dir` (lexically)."""
    if rest.startswith("/"):
        path = posixpath.normpath(rest)
    elif rest.startswith(("./", "../")):
        path = posixpath.normpath(posixpath.join(base_dir, rest))
    else:
        raise _fail(uri, "use file:///absolute/path or file://./relative/to/the/manifest")
    if path in ("/", ".") or rest.endswith("/"):
        raise _fail(uri, "must name a file")
    return ModelSource("file", uri, path=path)


def download_url(source: ModelSource, hf_endpoint: str | None, *,
                 modelscope_endpoint: str | None = None) -> str | None:
    """Where the helper downloads the file from; None when it is copied (`file`) or pulled by Ollama.

    `hf_endpoint` is the value of `HF_ENDPOINT` (a mirror) when set; None means https://huggingface.co.
    Raises ValueError for whole-repository snapshots, which are not supported yet.
    """
    if source.scheme in ("hf", "modelscope"):
        if source.file is None:
            raise ValueError(f"model source {source.uri!r}: whole-repository downloads are not supported yet; "
                             f"name a file: {source.scheme}://{source.repo}/FILE")
        revision = quote(source.revision or "", safe="")
        file = quote(source.file, safe="/")
        repo = quote(source.repo or "", safe="/")
        if source.scheme == "hf":
            # The URL form huggingface_hub's hf_hub_url() builds: revision fully quoted, file quoted keeping '/'.
            return f"{_endpoint(hf_endpoint, HF_ENDPOINT)}/{repo}/resolve/{revision}/{file}"
        # ModelScope serves files at /models/{repo}/resolve/{revision}/{file}, the Hugging Face-compatible form
        # many public download scripts use; the SDK's get_file_download_url() uses the older equivalent
        # /api/v1/models/{repo}/repo?Revision=...&FilePath=....
        return f"{_endpoint(modelscope_endpoint, MODELSCOPE_ENDPOINT)}/models/{repo}/resolve/{revision}/{file}"
    if source.scheme in ("https", "http"):
        return source.url
    return None


def _endpoint(value: str | None, default: str) -> str:
    """A hub endpoint without its trailing slash; it must be an http(s) URL."""
    endpoint = (value or default).rstrip("/")
    if not endpoint.startswith(("https://", "http://")) or not urlsplit(endpoint).hostname:
        raise ValueError(f"hub endpoint {value!r} is not an http(s) URL")
    return endpoint


def safe_filename(name: str) -> str:
    """A file name safe to use in the cache: no slashes, no leading dots, only plain characters."""
    cleaned = _SAFE_FILENAME.sub("_", posixpath.basename(name.replace("\\", "/"))).lstrip(".")
    return cleaned or "model"


def cache_path(data_dir: str, model_name: str, source: ModelSource) -> str:
    """Where a model lives on a host: `{data_dir}/models/{model_name}/{filename}`.

    `model_name` is already a DNS-1123 label. Snapshots (no file) get the model's directory. Ollama keeps its
    models itself, so asking for an Ollama source's path is an error.
    """
    if source.scheme == "ollama":
        raise ValueError(f"model source {source.uri!r}: Ollama models are stored by Ollama, not in the cache")
    directory = posixpath.join(data_dir.rstrip("/") or "/", "models", model_name)
    filename = source.filename
    return posixpath.join(directory, safe_filename(filename)) if filename else directory


def detect_format(filename: str) -> str:
    """File format from the name: gguf, safetensors, pytorch (.bin/.pt/.pth), onnx, else other."""
    suffix = posixpath.splitext(filename.lower())[1]
    return _FORMATS.get(suffix, "other")


def source_format(source: ModelSource) -> str:
    """Format of what a source provides: `ollama` for Ollama, the file's format otherwise (`other` if unknown)."""
    if source.scheme == "ollama":
        return "ollama"
    filename = source.filename
    return detect_format(filename) if filename else "other"
