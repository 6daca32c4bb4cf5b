#!/usr/bin/python3
"""Operator helper for the NESOP Store, run from the app directory.

``manage.py check`` exits 0 if the database is usable, else says why and exits 1;
``manage.py stats`` prints the number of products, customers and orders.
"""

import sqlite3
import sys
from contextlib import closing

import config
import store

USAGE = "usage: manage.py check|stats"


def main(argv: list[str]) -> int:
    if argv not in (["check"], ["stats"]):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        with closing(store.connect(config.DATABASE, config.BUSY_TIMEOUT_MS)) as conn:
            problems = store.schema_problems(conn)
            counts = store.stats(conn) if not problems else {}
    except sqlite3.Error as error:
        problems = [str(error)]
    if problems:
        print(f"{config.DATABASE}: {'; '.join(problems)}", file=sys.stderr)
        return 1
    if argv == ["stats"]:
        for name, count in counts.items():
            print(f"{name}: {count}")
    else:
        print(f"{config.DATABASE}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
