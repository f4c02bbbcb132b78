"""``python -m nas.lut``: the command of :mod:`nas.app.lut`."""

import sys

from nas.app.lut import main

if __name__ == "__main__":
    sys.exit(main())
