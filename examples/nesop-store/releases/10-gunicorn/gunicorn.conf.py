"""How gunicorn serves the NESOP Store (deploy/nesop-store.service starts it).

gunicorn reads this file after changing to the app directory (--chdir), so
the address comes from config.py, as for ``python3 server.py``: the
NESOP_STORE_HOST and NESOP_STORE_PORT environment variables still apply.
"""

import signal
from typing import Any

# gunicorn takes every name defined here that is one of its settings, and
# "config" is one: only the two values are imported from config.py.
from config import HOST, PORT

bind = [f"{HOST}:{PORT}"]

# Two processes of four threads. SQLite copes with several processes as with
# several threads: one connection per request, WAL and a busy timeout, and
# writes take the lock up front (store.py).
workers = 2
worker_class = "gthread"
threads = 4

# The app is built once, in the master, before the workers are forked
# (wsgi.py): an app that cannot be imported stops gunicorn at once, with the
# error in the journal, instead of each worker failing in turn; and /health
# reports the master's pid, which is the service's MainPID.
preload_app = True

# On SIGTERM the workers finish the requests in flight, for at most this long:
# less than the unit's TimeoutStopSec=20.
graceful_timeout = 15
# A worker stuck on one request this long is restarted.
timeout = 30

# Nothing is written into the app directory, which is the home of the store's
# account: no control socket (by default in $HOME/.gunicorn) and no pid file.
control_socket_disable = True

# Errors go to stderr, the journal. Requests are not logged: /health is polled
# many times a second during an update.
errorlog = "-"


def post_fork(server: Any, worker: Any) -> None:
    """A new worker ends at once on SIGTERM until it sets its own handlers.

    Until then it has the master's handler, which would only queue the signal
    in the worker's copy of the master: a stop just after the start would
    wait out graceful_timeout for a worker that never heard it. The worker
    has no request yet, so there is nothing to finish.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
