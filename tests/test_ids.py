"""Reservation ids: unique within a process, across threads, and across a fork."""

from __future__ import annotations

import os
import string
import threading

import pytest

from guardrail.engine.ids import reservation_id


def test_ids_are_32_hex_characters_and_never_repeat_across_threads() -> None:
    found: list[list[str]] = [[] for _ in range(8)]

    def draw(into: list[str]) -> None:
        into.extend(reservation_id() for _ in range(20_000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for into in found for i in into]
    assert len(set(ids)) == len(ids) == 160_000
    assert all(len(i) == 32 and set(i) <= set(string.hexdigits) for i in ids[:100])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_draws_its_own_prefix() -> None:
    parent = reservation_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id, then out without running the parent's cleanup
        try:
            os.write(write, reservation_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child[:16] != parent[:16]
    assert reservation_id()[:16] == parent[:16]  # the parent's own prefix is unchanged
