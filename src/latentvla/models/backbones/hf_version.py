"""The transformers release the HF backbones need, checked when one is built (one line, not a deep TypeError).

The code calls transformers' 5.x APIs: model forwards take `cache=` (renamed from `past_key_values` in 5.24.0;
5.23.0's Qwen2Model.forward still has `past_key_values`), `from_pretrained(dtype=)`, and the PIL-backed image
processors (`Qwen2VLImageProcessorPil`, `SiglipImageProcessorPil`, `BitImageProcessorPil`, ...).
Checked against the published wheels of 5.0.0, 5.12.1, 5.20.0, 5.22.2, 5.23.0 and 5.24.0; tested on 5.24 / 5.25.
"""

from __future__ import annotations

MIN_TRANSFORMERS = "5.24.0"
HF_INSTALL = 'pip install -e ".[hf]"'


class TransformersVersionError(ImportError, ValueError):
    """An ImportError that the CLI's ValueError handlers also print as one `error:` line (exit 2)."""


def installed_version() -> str | None:
    """The installed transformers distribution's version (package metadata), None if not installed."""
    import importlib.metadata

    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_transformers() -> None:
    """Raise `TransformersVersionError` if transformers is missing or older than `MIN_TRANSFORMERS`."""
    version = installed_version()
    if version is None:
        raise TransformersVersionError(f"the HF backbones need transformers: `{HF_INSTALL}`.")
    from packaging.version import Version

    if Version(version) < Version(MIN_TRANSFORMERS):
        raise TransformersVersionError(
            f"transformers {version} is too old: the HF backbones need >= {MIN_TRANSFORMERS} (model forwards take "
            f"`cache=`); upgrade with `pip install -U 'transformers>={MIN_TRANSFORMERS}'` or `{HF_INSTALL}`."
        )
