"""Connecting to a running scheduler that other clients use at the same time (cluster/connect.py)."""
from __future__ import annotations

import asyncio

import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from cluster.connect import HANDSHAKE_ATTEMPTS, _abandon, connect


class BroadcastAtHandshake(SchedulerPlugin):
    """For the next `armed` clients to connect: the scheduler sends a message to every client right after their
    `stream-start`, in the same batch, as it does when another client cancels futures (`cancelled-keys`)."""

    name = "broadcast-at-handshake"

    def __init__(self):
        self.armed, self.sent = 0, 0

    def add_client(self, scheduler, client):
        if self.armed:
            self.armed -= 1
            # runs after add_client has queued stream-start, before its batch (2 ms) goes out
            asyncio.get_running_loop().call_soon(self._broadcast, scheduler)

    def _broadcast(self, scheduler):
        scheduler.report({"op": "cancelled-keys", "keys": [], "reason": None, "msg": None})
        self.sent += 1


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        plugin = BroadcastAtHandshake()
        cluster.scheduler.add_plugin(plugin)
        yield cluster.scheduler_address, plugin, cluster.scheduler


def test_a_broadcast_inside_the_handshake_breaks_a_plain_client(scheduler):
    """The distributed behaviour connect.attach works around: if this starts failing, distributed fixed it."""
    address, plugin, _ = scheduler
    plugin.armed, plugin.sent = 1, 0
    with pytest.raises(AssertionError) as failed:
        Client(address)
    _abandon(failed.value)  # else its __del__ may run inside a later client's start and deadlock on its loop
    assert plugin.sent == 1


def test_a_command_connects_through_a_broadcast_inside_the_handshake(scheduler):
    """Also inside a caller's own `with Client(...)`, and leaving no half-made client registered."""
    import time

    address, plugin, sched = scheduler
    with Client(address) as callers:
        plugin.armed, plugin.sent = 2, 0
        with connect(scheduler=address) as client:
            assert plugin.sent == 2 and plugin.armed == 0  # two attempts were broken; a later one connected
            assert client.submit(sum, [1, 2]).result() == 3
            deadline = time.monotonic() + 10
            while set(sched.clients) - {"fire-and-forget"} != {callers.id, client.id} \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert set(sched.clients) - {"fire-and-forget"} == {callers.id, client.id}


def test_a_handshake_broken_every_time_fails_the_command_in_one_line_saying_where(scheduler, tmp_path):
    """An error without a message (a library's bare assert) still says where it was raised."""
    from drills_cli import impressions, one_error_line, run

    address, plugin, _ = scheduler
    plugin.armed, plugin.sent = HANDSHAKE_ATTEMPTS, 0
    src = tmp_path / "one.csv"
    src.write_text("01/01/2019,1,campaign_00,video_0,0.5\n")
    line = one_error_line(run(impressions(str(tmp_path / "warehouse"), "partition", str(src), "T", scheduler=address)),
                          1, "AssertionError", "raised at distributed/client.py", "_ensure_connected")
    assert plugin.sent == HANDSHAKE_ATTEMPTS, line
