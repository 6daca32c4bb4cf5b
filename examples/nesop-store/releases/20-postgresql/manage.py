#!/opt/nesop-store/venv/bin/python3
"""Operator helper for the NESOP Store, run from the app directory.

``manage.py check`` exits 0 if the database is usable, else says why and exits 1;
``manage.py stats`` prints the number of products, customers and orders. The
database is the store's: PostgreSQL's if DATABASE_URL is set, else SQLite's.
"""

import sys
from contextlib import closing

import config
import db
import store

USAGE = "usage: manage.py check|stats"


def main(argv: list[str]) -> int:
    if argv not in (["check"], ["stats"]):
        print(USAGE, file=sys.stderr)
        return 2
    database = db.target(config.DATABASE_URL, config.DATABASE)
    try:
        with closing(db.connect(database, config.BUSY_TIMEOUT_MS)) as conn:
            problems = store.schema_problems(conn)
            counts = store.stats(conn) if not problems else {}
    except db.Error as error:
        problems = [str(error).strip()]
    if problems:
        print(f"{db.describe(database)}: {'; '.join(problems)}", file=sys.stderr)
        return 1
    if argv == ["stats"]:
        for name, count in counts.items():
            print(f"{name}: {count}")
    else:
        print(f"{db.describe(database)}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
