"""Make any network access fail, to prove that loading and restoring stay offline."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator


class NetworkAccessError(AssertionError):
    """Raised by every connection attempt inside :func:`network_disabled`."""


@contextlib.contextmanager
def network_disabled() -> Iterator[None]:
    """Within the block, opening a socket connection raises :class:`NetworkAccessError`
    and the Hugging Face hub libraries are put in offline mode (``HF_HUB_OFFLINE=1``)."""

    def refuse(*args, **kwargs):
        raise NetworkAccessError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,
             os.environ.get("HF_HUB_OFFLINE"))
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection = saved[:3]
        if saved[3] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[3]
