"""The tracking snippet's routes (GET /snippet.js, the per-pool config, /demo).

Being built under issue 5; no routes yet.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
