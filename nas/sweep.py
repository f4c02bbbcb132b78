"""``python -m nas.sweep``: the command of :mod:`nas.app.sweep`."""

import sys

from nas.app.sweep import main

if __name__ == "__main__":
    sys.exit(main())
