"""GX's Data Docs page views, compiling their Jinja templates once per process.

GX gives every view a Jinja environment of its own and builds new views for each Data Docs
build, so each validation call compiled the ~50 page templates again: a third of the time of a
small suite. These views share one in-memory bytecode cache instead. Jinja keys each entry by
template name and file and checks it against the template source's checksum, and the compiled code
looks filters up in the environment that renders it, so sharing it changes no page.

GX imports this module itself, by the name given in the Data Docs site of `gx._context`, so it
is never imported before GX is.
"""

from __future__ import annotations

from typing import Any

import jinja2
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from jinja2.bccache import Bucket


class _MemoryBytecodeCache(jinja2.BytecodeCache):
    """Compiled templates by Jinja's key (template name and file), for the life of the process."""

    def __init__(self) -> None:
        self._compiled: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        if bucket.key in self._compiled:
            bucket.bytecode_from_string(self._compiled[bucket.key])

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._compiled[bucket.key] = bucket.bytecode_to_string()


_COMPILED = _MemoryBytecodeCache()


class _SharedTemplates:
    """Mixin for a GX view: its Jinja environment uses the process-wide bytecode cache."""

    env: jinja2.Environment

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env.bytecode_cache = _COMPILED


class PageView(_SharedTemplates, DefaultJinjaPageView):
    """The page of a suite or a validation result."""


class IndexPageView(_SharedTemplates, DefaultJinjaIndexPageView):
    """The index.html of the Data Docs site."""
