"""The channel between the daemon and its fetch processes (clearmount/workers.py)."""

from __future__ import annotations

import socket
import struct

import pytest

from clearmount.workers import Channel, Job, Outcome


def test_messages_arrive_whole_and_in_order_however_the_bytes_come() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        sender, receiver = Channel(ours), Channel(theirs)
        job = Job("s3://b/k", "k", '"etag"', 5, "/c/k_1.part", "/c/k", None, 10.0)
        outcome = Outcome(5, True, False, (1, 2, 5, 4))
        # several messages in one recv
        sender.send(("job", 1, 0, tuple(job)))
        sender.send(("done", 1, tuple(outcome)))
        big = ("store", 7, "x" * 100_000)  # more than one recv takes
        sender.send(big)
        received = [receiver.next() for _ in range(3)]
        assert received[0] == ("job", 1, 0, tuple(job))
        assert Job._make(received[0][3]) == job
        assert Outcome._make(received[1][2]) == outcome
        assert received[2] == big
        # a message cut in two: nothing until its second half comes
        frame = frame_of(("cancel", 2))
        ours.sendall(frame[:3])
        ours.sendall(frame[3:])
        assert receiver.next() == ("cancel", 2)


def test_the_other_end_closing_is_eoferror() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        receiver = Channel(theirs)
        ours.sendall(frame_of(("ready",))[:5])  # a message cut short by the close
        ours.close()
        with pytest.raises(EOFError):
            receiver.next()


def frame_of(message: tuple[object, ...]) -> bytes:
    """A message as `Channel.send` writes it."""
    left, right = socket.socketpair()
    with left, right:
        Channel(left).send(message)
        length = struct.unpack("!I", right.recv(4))[0]
        return struct.pack("!I", length) + right.recv(length)
