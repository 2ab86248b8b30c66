"""`python -m trainer ...`: the same as `python -m twinkle_trainer ...` (the old name of the embedded trainer)."""

import sys

from twinkle_trainer.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
