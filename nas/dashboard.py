"""``python -m nas.dashboard``: the command of :mod:`nas.app.dashboard`."""

import sys

from nas.app.dashboard import main

if __name__ == "__main__":
    sys.exit(main())
