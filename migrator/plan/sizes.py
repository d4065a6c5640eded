"""Human sizes ("200G", "1.5T", 1024) to bytes and back. Units are powers of 1024."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGT]?)B?$")

# A volume container's data may not exceed 200 GB.
DEFAULT_MAX_VOLUME_SIZE = 200 * 1024**3


def parse_size(value: int | str) -> int:
    """Return bytes for an int or a string like "200G". Raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"size must be positive: {value}")
        return value
    match = _SIZE_RE.match(str(value).strip().upper())
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 200G, 512M, or bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_size(n: int | float) -> str:
    """Short human form: 1.5G, 300M, 12K, 512B."""
    for unit in ("T", "G", "M", "K"):
        if abs(n) >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return f"{int(n)}B"
