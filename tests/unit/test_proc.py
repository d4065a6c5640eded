"""archive._proc.Stage: the output thread of a capture hands every item over in order and never loses an error."""

from __future__ import annotations

import threading

import pytest

from migrator.archive._proc import Stage


def test_stage_consumes_every_item_in_order_before_close_returns():
    got: list[int] = []
    stage = Stage("t", got.append, depth=2)
    for i in range(1000):
        stage.put(i)
    stage.close()
    assert got == list(range(1000))


def test_stage_consumer_error_reaches_producer_and_never_blocks_it():
    seen: list[int] = []

    def consume(item):
        seen.append(item)
        if item == 3:
            raise OSError("disk full")

    stage = Stage("t", consume, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(10_000):  # would block forever on a full queue if the consumer stopped draining
            stage.put(i)
    with pytest.raises(OSError, match="disk full"):
        stage.close()
    assert seen == [0, 1, 2, 3]  # nothing consumed after the error


def test_stage_abort_drops_what_is_queued_and_joins():
    release = threading.Event()
    started = threading.Event()
    got: list[int] = []

    def consume(item):
        started.set()
        release.wait()
        got.append(item)

    stage = Stage("t", consume, depth=4)
    stage.put(0)
    started.wait()  # the consumer holds item 0
    for i in range(1, 5):
        stage.put(i)  # fills the queue
    aborter = threading.Thread(target=stage.abort)
    aborter.start()
    while not stage._skip:  # abort marks the rest as dropped before it queues its end marker
        pass
    release.set()
    aborter.join()
    assert got == [0]
    assert not stage._thread.is_alive()
