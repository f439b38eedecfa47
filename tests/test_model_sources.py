"""Model source URIs: parsing, download URLs, cache paths and formats (pure, table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from aimactl.models.sources import (
    ModelSource,
    cache_path,
    detect_format,
    download_url,
    parse_source,
    safe_filename,
    source_format,
)

BASE = "/home/op/stack"

# uri -> fields expected on the parsed ModelSource
GOOD: list[tuple[str, dict[str, Any]]] = [
    ("hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
     {"scheme": "hf", "repo": "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "file": "qwen2.5-0.5b-instruct-q4_k_m.gguf",
      "revision": "main", "single_file": True}),
    ("hf://org/repo/model.gguf@v1.0",
     {"repo": "org/repo", "file": "model.gguf", "revision": "v1.0"}),
    ("hf://org/repo/sub/dir/model.safetensors@0123abcd",
     {"repo": "org/repo", "file": "sub/dir/model.safetensors", "revision": "0123abcd"}),
    ("hf://org/repo/model.gguf@refs/pr/1",
     {"file": "model.gguf", "revision": "refs/pr/1"}),
    ("hf://org/repo",
     {"repo": "org/repo", "file": None, "revision": "main", "single_file": False}),
    ("hf://org/repo@dev",
     {"repo": "org/repo", "file": None, "revision": "dev", "single_file": False}),
    ("hf://org/repo/weird%20name+v2.gguf",
     {"file": "weird%20name+v2.gguf"}),
    ("modelscope://qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
     {"scheme": "modelscope", "repo": "qwen/Qwen2.5-0.5B-Instruct-GGUF", "revision": "master"}),
    ("modelscope://org/repo/model.gguf@v2",
     {"file": "model.gguf", "revision": "v2"}),
    ("ollama://llama3.2",
     {"scheme": "ollama", "name": "llama3.2", "tag": "latest"}),
    ("ollama://qwen2.5:0.5b",
     {"name": "qwen2.5", "tag": "0.5b"}),
    ("ollama://library/llama3:8b-instruct-q4_0",
     {"name": "library/llama3", "tag": "8b-instruct-q4_0"}),
    ("ollama://hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
     {"name": "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", "tag": "Q4_K_M"}),
    ("https://example.com/models/tiny.gguf",
     {"scheme": "https", "url": "https://example.com/models/tiny.gguf"}),
    ("https://example.com:8443/a/b/tiny.gguf?download=1",
     {"url": "https://example.com:8443/a/b/tiny.gguf?download=1"}),
    ("http://10.0.0.5:8000/tiny.gguf",
     {"scheme": "http", "url": "http://10.0.0.5:8000/tiny.gguf"}),
    ("file:///srv/models/tiny.gguf",
     {"scheme": "file", "path": "/srv/models/tiny.gguf"}),
    ("file:///srv/models/../other/./tiny.gguf",
     {"path": "/srv/other/tiny.gguf"}),
    ("file://./models/tiny.gguf",
     {"path": "/home/op/stack/models/tiny.gguf"}),
    ("file://../shared/tiny.gguf",
     {"path": "/home/op/shared/tiny.gguf"}),
    ("file://./a/../b/tiny.gguf",
     {"path": "/home/op/stack/b/tiny.gguf"}),
]


@pytest.mark.parametrize(("uri", "expected"), GOOD, ids=[u for u, _ in GOOD])
def test_parse_good_sources(uri: str, expected: dict[str, Any]) -> None:
    source = parse_source(uri, BASE)
    assert source.uri == uri
    assert {k: getattr(source, k) for k in expected} == expected


BAD: list[tuple[str, str]] = [
    ("", "empty"),
    ("hf://org", "needs a repository"),
    ("hf://org/", "needs a repository"),
    ("hf://", "nothing after the scheme"),
    ("hf://org/repo/../../x", "'..'"),
    ("hf://org/repo/a//b.gguf", "empty"),
    ("hf://org/repo/./b.gguf", "'.'"),
    ("hf://org/repo/", "empty"),
    ("hf://../repo/x.gguf", "not a valid organisation"),
    ("hf://org/re po/x.gguf", "spaces"),
    ("hf://org/repo/x.gguf@", "empty revision"),
    ("hf://org/repo/x.gguf@../main", "not a revision"),
    ("hf://org/repo@v1/model.gguf", "put the revision last"),
    ("hf://org/repo/x.gguf?download=1", "query"),
    ("modelscope://org", "needs a repository"),
    ("ollama://", "nothing after the scheme"),
    ("ollama://llama3:", "not an Ollama tag"),
    ("ollama://../llama3", "'..'"),
    ("ollama://registry:5000/llama3", "not a valid Ollama model name"),
    ("https://", "nothing after the scheme"),
    ("https://example.com/", "must name a file"),
    ("https://example.com", "must name a file"),
    ("https:///tiny.gguf", "no host"),
    ("https://example.com:99999/x.gguf", "not a valid URL"),
    ("file://rel/tiny.gguf", "file:///absolute/path"),
    ("file://tiny.gguf", "file:///absolute/path"),
    ("file:///", "must name a file"),
    ("file://./models/", "must name a file"),
    ("s3://bucket/model.gguf", "unknown scheme"),
    ("ftp://host/model.gguf", "unknown scheme"),
    ("/srv/models/tiny.gguf", "unknown scheme"),
    ("HF://org/repo/x.gguf", "unknown scheme"),
]


@pytest.mark.parametrize(("uri", "message"), BAD, ids=[u or "<empty>" for u, _ in BAD])
def test_parse_bad_sources(uri: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_source(uri, BASE)
    assert message in str(caught.value)


def test_errors_name_the_uri() -> None:
    with pytest.raises(ValueError) as caught:
        parse_source("hf://org", BASE)
    assert "'hf://org'" in str(caught.value)


URLS: list[tuple[str, str | None, str | None]] = [
    ("hf://org/repo/model.gguf", None, "https://huggingface.co/org/repo/resolve/main/model.gguf"),
    ("hf://org/repo/model.gguf@v1.0", None, "https://huggingface.co/org/repo/resolve/v1.0/model.gguf"),
    ("hf://org/repo/sub/dir/model.gguf", None, "https://huggingface.co/org/repo/resolve/main/sub/dir/model.gguf"),
    ("hf://org/repo/model.gguf@refs/pr/1", None, "https://huggingface.co/org/repo/resolve/refs%2Fpr%2F1/model.gguf"),
    ("hf://org/repo/a%b+c.gguf", None, "https://huggingface.co/org/repo/resolve/main/a%25b%2Bc.gguf"),
    ("hf://org/repo/model.gguf", "https://hf-mirror.com", "https://hf-mirror.com/org/repo/resolve/main/model.gguf"),
    ("hf://org/repo/model.gguf", "https://hf-mirror.com/", "https://hf-mirror.com/org/repo/resolve/main/model.gguf"),
    ("hf://org/repo/model.gguf", "http://10.0.0.2:8080/hf",
     "http://10.0.0.2:8080/hf/org/repo/resolve/main/model.gguf"),
    ("modelscope://qwen/Qwen2.5-GGUF/q4.gguf", "https://hf-mirror.com",
     "https://modelscope.cn/models/qwen/Qwen2.5-GGUF/resolve/master/q4.gguf"),
    ("modelscope://org/repo/dir/q4.gguf@v2", None, "https://modelscope.cn/models/org/repo/resolve/v2/dir/q4.gguf"),
    ("https://example.com/models/tiny.gguf?x=1", None, "https://example.com/models/tiny.gguf?x=1"),
    ("http://10.0.0.5/tiny.gguf", "https://hf-mirror.com", "http://10.0.0.5/tiny.gguf"),
    ("file:///srv/tiny.gguf", None, None),
    ("file://./tiny.gguf", None, None),
    ("ollama://qwen2.5:0.5b", None, None),
]


@pytest.mark.parametrize(("uri", "endpoint", "expected"), URLS, ids=[f"{u}|{e}" for u, e, _ in URLS])
def test_download_urls(uri: str, endpoint: str | None, expected: str | None) -> None:
    assert download_url(parse_source(uri, BASE), endpoint) == expected


def test_fragment_and_query_characters_in_hf_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="query strings and fragments"):
        parse_source("hf://org/repo/my#model?.gguf", BASE)


def test_modelscope_endpoint_can_be_overridden() -> None:
    source = parse_source("modelscope://org/repo/q4.gguf", BASE)
    assert download_url(source, None, modelscope_endpoint="https://www.modelscope.cn/") == \
        "https://www.modelscope.cn/models/org/repo/resolve/master/q4.gguf"


def test_snapshot_has_no_download_url_yet() -> None:
    with pytest.raises(ValueError, match="whole-repository downloads are not supported yet"):
        download_url(parse_source("hf://org/repo", BASE), None)


@pytest.mark.parametrize("endpoint", ["ftp://mirror", "huggingface.co", "https://"])
def test_bad_hub_endpoint(endpoint: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        download_url(parse_source("hf://org/repo/x.gguf", BASE), endpoint)


CACHE: list[tuple[str, str]] = [
    ("hf://org/repo/sub/model.Q4_K_M.gguf", "/data/models/qwen/model.Q4_K_M.gguf"),
    ("hf://org/repo/weird%20name+v2.gguf", "/data/models/qwen/weird_20name+v2.gguf"),
    ("https://example.com/dl/tiny.gguf?token=abc", "/data/models/qwen/tiny.gguf"),
    ("https://example.com/dl/my%20model.gguf", "/data/models/qwen/my_model.gguf"),
    ("https://example.com/dl/.hidden.gguf", "/data/models/qwen/hidden.gguf"),
    ("https://example.com/dl/...gguf", "/data/models/qwen/gguf"),
    ("file://./models/tiny.gguf", "/data/models/qwen/tiny.gguf"),
    ("modelscope://org/repo/q4.gguf@v2", "/data/models/qwen/q4.gguf"),
    ("hf://org/repo", "/data/models/qwen"),
]


@pytest.mark.parametrize(("uri", "expected"), CACHE, ids=[u for u, _ in CACHE])
def test_cache_paths(uri: str, expected: str) -> None:
    assert cache_path("/data", "qwen", parse_source(uri, BASE)) == expected


def test_cache_path_tolerates_a_trailing_slash_and_keeps_tilde_for_the_host() -> None:
    source = parse_source("hf://org/repo/x.gguf", BASE)
    assert cache_path("/data/", "m", source) == "/data/models/m/x.gguf"
    assert cache_path("~/.local/share/aimactl", "m", source) == "~/.local/share/aimactl/models/m/x.gguf"


def test_ollama_models_have_no_cache_path() -> None:
    with pytest.raises(ValueError, match="stored by Ollama"):
        cache_path("/data", "m", parse_source("ollama://llama3", BASE))


@pytest.mark.parametrize(("name", "expected"), [
    ("a/b/../c.gguf", "c.gguf"), ("..", "model"), ("", "model"), ("..\\evil.gguf", "evil.gguf"),
    ("ok-name_1.2+x.safetensors", "ok-name_1.2+x.safetensors"), ("tab\there.gguf", "tab_here.gguf"),
])
def test_safe_filename(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


@pytest.mark.parametrize(("filename", "fmt"), [
    ("m.gguf", "gguf"), ("M.GGUF", "gguf"), ("model-00001-of-00002.safetensors", "safetensors"),
    ("pytorch_model.bin", "pytorch"), ("w.pt", "pytorch"), ("w.pth", "pytorch"), ("model.onnx", "onnx"),
    ("README.md", "other"), ("noext", "other"), ("gguf", "other"), (".gguf", "other"),
])
def test_detect_format(filename: str, fmt: str) -> None:
    assert detect_format(filename) == fmt


@pytest.mark.parametrize(("uri", "fmt"), [
    ("ollama://llama3", "ollama"), ("hf://org/repo/x.gguf", "gguf"), ("hf://org/repo", "other"),
    ("https://example.com/m.safetensors", "safetensors"), ("file:///srv/m.onnx", "onnx"),
])
def test_source_format(uri: str, fmt: str) -> None:
    assert source_format(parse_source(uri, BASE)) == fmt


def test_sources_are_frozen_and_carry_their_reference() -> None:
    source = parse_source("ollama://qwen2.5:0.5b", BASE)
    assert isinstance(source, ModelSource)
    assert source.reference == "qwen2.5:0.5b"
    assert parse_source("hf://o/r/x.gguf", BASE).reference is None
    with pytest.raises(AttributeError):
        source.tag = "other"  # type: ignore[misc]
