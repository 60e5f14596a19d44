"""What the Service hands back (`Outcome`) and where a stream's chunks go (`Delivery`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

UsageSink = Callable[[str, dict], None]


@dataclass
class Outcome:
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | None = None                          # non-streaming answer
    chunks: AsyncIterator[dict] | None = None         # streaming answer (OpenAI chunks)


@dataclass(frozen=True)
class Delivery:
    """Where a stream's chunks go and what they owe on the way."""
    include_usage: bool                 # keep the usage-only chunk
    on_usage: UsageSink | None = None   # counts it (metrics)
    frames: bool = False                # straight to the OpenAI SSE writer: JSON bytes welcome
