"""The model being served, swapped without a restart when the source's alias moves.

`LiveModel.poll` asks the source every few seconds which version is current; when it differs from
the one served, the new version is loaded in a worker thread and the reference is replaced in one
assignment. Nothing is ever mutated: a batch that picked up the old `ServedModel` finishes on it,
the next batch gets the new one. A failed load (a broken file, the registry unreachable) is logged
and the old model keeps serving; the poller tries again on its next round.
"""

from __future__ import annotations

import asyncio
import logging

from serving.model import ModelSource, ServedModel

log = logging.getLogger(f"shrinkflow.{__name__}")  # under "shrinkflow": the CLI logs it at INFO


class NoModel(RuntimeError):
    """No version could be loaded yet (nothing registered, or every load so far failed)."""


class LiveModel:
    """Holds the current `ServedModel` of a `ModelSource`; `get` it, `refresh` or `poll` to follow."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.model: ServedModel | None = None
        self.version: str | None = None  # what the source called the served version when asked
        self._failed: str | None = None  # last version that failed to load: warned about once

    def get(self) -> ServedModel:
        model = self.model  # one read: the poller may swap the attribute at any time
        if model is None:
            raise NoModel("no model is loaded yet: the source has no current version, or loading it "
                          "failed (see the server log)")
        return model

    async def refresh(self) -> bool:
        """Load the source's current version if it is not the one served; True when it swapped."""
        served = self.version
        try:
            version = await asyncio.to_thread(self.source.current_version)
        except Exception as error:
            log.warning("could not ask the model source for its current version (%s); still serving "
                        "version %s", error, served)
            return False
        if version is None or version == served:
            return False
        try:
            model = await asyncio.to_thread(self.source.load, version)
        except Exception as error:
            if version != self._failed:
                log.warning("loading model version %s failed; still serving version %s", version, served,
                            exc_info=error)
            self._failed = version
            return False
        self.model, self.version, self._failed = model, version, None
        log.info("serving model version %s (was %s)", model.version, served)
        return True

    async def poll(self, seconds: float) -> None:
        """`refresh` every `seconds`, until cancelled."""
        while True:
            await asyncio.sleep(seconds)
            await self.refresh()

