"""A customer who keeps loading a page that reads the database until told to stop.

Run on the host inside the container's network namespace (`nsenter --net`): each request goes on
a new connection and may wait long (a request that waits in the socket's queue while the app is
stopped is not a failure; one refused, reset or answered with an error is). It prints one JSON
line: how many requests it sent, the failures with their time and error, and the longest request.

    python3 readclient.py URL STOP_FILE [CLIENTS]
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

MAX_SECONDS = 900  # a bound: the client stops by itself even if nobody tells it to
TIMEOUT = 120.0  # one request may wait this long (the app is gated during a long undo)


def main(argv: list[str]) -> int:
    url, stop = urlsplit(argv[0]), Path(argv[1])
    clients = int(argv[2]) if len(argv) > 2 else 2
    lock = threading.Lock()
    sent = 0
    failures: list[dict[str, object]] = []
    longest = 0.0
    deadline = time.monotonic() + MAX_SECONDS

    def run() -> None:
        nonlocal sent, longest
        while not stop.exists() and time.monotonic() < deadline:
            started = time.monotonic()
            error = None
            try:
                conn = http.client.HTTPConnection(
                    url.hostname or "127.0.0.1", url.port or 80, timeout=TIMEOUT
                )
                try:
                    conn.request("GET", url.path or "/")
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        error = f"HTTP {response.status}"
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
            took = time.monotonic() - started
            with lock:
                sent += 1
                longest = max(longest, took)
                if error is not None:
                    failures.append({"at": time.time(), "error": error})
            time.sleep(0.01)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"sent": sent, "failures": failures, "longest": round(longest, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
