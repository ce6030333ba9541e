"""Starting a media plane process (``callengine/mediaplane.py``), early.

``callengine serve`` starts the plane's interpreter before it has read its
configuration (:func:`prespawn`): the plane's imports (numpy, the codecs: about a
third of a second) then run while the node imports and loads its own, instead of after.
The first :class:`~callengine.mediaplane.PlaneMedia` takes the process
(:func:`take`) and initialises it; a node that turns out to have no plane (the
configuration says so, a WebSocket listener, several workers) drops it
(:func:`discard`). This module imports nothing heavy, so that the spawn is the first
thing ``serve`` does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

__all__ = ["discard", "launch", "prespawn", "take"]

_prespawned: tuple[subprocess.Popen[bytes], socket.socket] | None = None


def launch() -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a plane process on one end of a new socket pair; returns it and our end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "callengine.mediaplane", str(theirs.fileno()), str(os.getpid())],
            pass_fds=(theirs.fileno(),),
            close_fds=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


def prespawn() -> None:
    """Start this process's first plane now (once)."""
    global _prespawned
    if _prespawned is None:
        _prespawned = launch()


def take() -> tuple[subprocess.Popen[bytes], socket.socket] | None:
    """The prespawned plane, if there is one still running (once); else ``None``."""
    global _prespawned
    taken, _prespawned = _prespawned, None
    if taken is not None and taken[0].poll() is not None:
        taken[1].close()
        return None
    return taken


def discard() -> None:
    """No plane after all: the prespawned one exits (end of file on its socket)."""
    taken = take()
    if taken is not None:
        taken[1].close()
        try:
            taken[0].wait(5)
        except subprocess.TimeoutExpired:
            taken[0].kill()
            taken[0].wait()
