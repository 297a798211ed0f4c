"""Imported last by the workers' fork server only (trajcli.engine.forkserver.PRELOAD), never by trajcli
itself: when trajcli ends, the server leaves at once instead of tearing down the interpreter that
imported Dask (during which it would still hold the command's stdout and stderr open, so a pipe
reading trajcli's output would not see its end; ~0.3 s when the server also imported torch). The
server has nothing to write or release then; the workers forked from it leave through os._exit
anyway, without exit handlers."""

import atexit
import os
import sys


def _leave() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


atexit.register(_leave)  # registered last, so it runs first
