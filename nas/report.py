"""``python -m nas.report``: the command of :mod:`nas.app.report`."""

import sys

from nas.app.report import main

if __name__ == "__main__":
    sys.exit(main())
