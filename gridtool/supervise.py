"""Supervised threads: a thread that dies of an unexpected exception ends the process.

A Python thread that dies leaves its process running without it, and says so only in a
traceback: an agent whose keepalive or guard thread died goes on looking healthy while
nothing renews its lease or self-fences, an agent whose intent thread died ignores every
intent. Every thread gridtool starts therefore runs its target through
:func:`supervised`: an exception that escapes the target is logged as one line
(``event=thread_died thread=NAME error=TYPE: MESSAGE where=FILE:LINE``) and the process
exits at once with status :data:`EXIT_THREAD_DIED` (``os._exit``: no cleanup that could
hang or undo the safe state; systemd restarts the service). For the agent that is the safe
side: nothing pets its watchdog any more, exactly as after a crash.

The expected errors (registry unreachable, libvirt errors, a refused fence) are each
thread's own business and never reach this; only what nobody planned for does.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

#: The exit status of a process one of whose supervised threads died (EX_SOFTWARE).
EXIT_THREAD_DIED = 70
#: What that status means, for the agent's man page.
THREAD_DIED_MEANING = ("One of the agent's threads, or its main loop, died of an error "
                       "nobody planned for (the line `event=thread_died` names the thread "
                       "and where): the agent ends at once, leaving its watchdog unpetted "
                       "as a crash would, for systemd to restart it.")

log = logging.getLogger("gridtool")


def die(thread: str, exc: BaseException, logger: logging.Logger | None = None) -> NoReturn:
    """Log the unexpected death of ``thread`` in one line and end the process now."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    message = " ".join(str(exc).split())
    try:
        (logger or log).critical("event=thread_died thread=%s error=%s: %s where=%s "
                                 "pid=%d note=exiting so that the service is restarted",
                                 thread.replace(" ", "_"), type(exc).__name__, message,
                                 where, os.getpid())
        for handler in logging.getLogger().handlers + (logger or log).handlers:
            handler.flush()
    finally:
        sys.stderr.flush()
        os._exit(EXIT_THREAD_DIED)


def supervised(target: Callable[..., object], name: str,
               logger: logging.Logger | None = None) -> Callable[..., None]:
    """``target`` wrapped so that an exception escaping it ends the process (:func:`die`)."""

    def run(*args: Any, **kwargs: Any) -> None:
        try:
            target(*args, **kwargs)
        except BaseException as exc:  # whatever it is, the process must end
            die(name, exc, logger)

    return run


def thread(target: Callable[..., object], name: str, args: tuple[Any, ...] = (),
           logger: logging.Logger | None = None) -> threading.Thread:
    """A daemon thread (not started) running ``target(*args)`` under :func:`supervised`."""
    return threading.Thread(target=supervised(target, name, logger), args=args, name=name,
                            daemon=True)


def start(target: Callable[..., object], name: str, args: tuple[Any, ...] = (),
          logger: logging.Logger | None = None) -> threading.Thread:
    """Start :func:`thread` and return it."""
    started = thread(target, name, args, logger)
    started.start()
    return started
