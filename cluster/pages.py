"""Bokeh's Dask dashboard pages on a LocalCluster's scheduler, mounted by the first request for them.

Mounted at the scheduler's start (distributed's default) they cost the driver ~0.4 s of imports before its first
worker can start, paid by every command whether or not anyone opens the dashboard (a 1 GB file's cold load:
7.61 -> 7.19 s, medians of 6 interleaved pairs, with this module). Here the scheduler's HTTP server starts at once
with its plain routes (JSON, Prometheus, health, the impressions page of report/live.py) and `install` makes
`PagesOnDemand` its not-found handler: the first request for any other path imports the pages (in a thread, so the scheduler's
event loop keeps scheduling), mounts them and redirects to the same address, which they now serve.
"""
from __future__ import annotations

import asyncio
import importlib

from tornado import web

PAGES = "distributed.dashboard.scheduler"
MOUNTING = "impressions-pages-mounting"  # key in the HTTP application's settings: the one mount's future


def install(scheduler) -> None:
    """Serve bokeh's pages on `scheduler` (started with ``dashboard=False`` and a dashboard address) on demand."""
    app = getattr(scheduler, "http_application", None)
    if app is not None:
        app.settings.update(default_handler_class=PagesOnDemand, default_handler_args={"scheduler": scheduler})


async def _mount(scheduler) -> bool:
    try:
        pages = await asyncio.get_running_loop().run_in_executor(None, importlib.import_module, PAGES)
    except ImportError:  # bokeh is a dependency of impressions; without it there are no pages to show
        return False
    pages.connect(scheduler.http_application, scheduler.http_server, scheduler, prefix="/")
    return True


class PagesOnDemand(web.ErrorHandler):
    """The scheduler's 404 handler. distributed's router asks its mounted applications (bokeh's, once there)
    for a path only when its own routes end in an ErrorHandler, hence the base class."""

    def initialize(self, scheduler) -> None:
        super().initialize(status_code=404)
        self.scheduler = scheduler

    async def prepare(self) -> None:
        settings = self.application.settings
        mounting = settings.get(MOUNTING)
        first = mounting is None or not mounting.done()  # this request (or one beside it) mounts the pages
        if mounting is None:
            mounting = settings[MOUNTING] = asyncio.ensure_future(_mount(self.scheduler))
        if first and await mounting:
            self.redirect(self.request.uri)  # served by the pages now, or a plain 404 after them
            return
        raise web.HTTPError(404)
