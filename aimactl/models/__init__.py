"""Models: source URI parsing (pure), cache paths and formats; fetching happens through the host helper."""

from aimactl.models.sources import (
    ModelSource,
    cache_path,
    detect_format,
    download_url,
    parse_source,
    safe_filename,
    source_format,
)

__all__ = ["ModelSource", "cache_path", "detect_format", "download_url", "parse_source", "safe_filename",
           "source_format"]
