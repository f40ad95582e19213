"""A resource that `async with` starts and always closes."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncResource:
    """`async with r:` awaits `r.start()` (closing again if that fails) and `r.aclose()` on exit."""

    async def start(self) -> None:
        """Acquire what the resource needs; by default nothing."""

    async def aclose(self) -> None:
        """Release everything `start` acquired, even after a partial start."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
