"""``python -m nas.run``: the command of :mod:`nas.app.run`."""

import sys

from nas.app.run import main

if __name__ == "__main__":
    sys.exit(main())
