"""`python -m fer_async.bench`: see fer_async.bench.cli."""

import sys

from fer_async.bench.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
