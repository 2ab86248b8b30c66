import sys

from twinkle_tui.cli import main

sys.exit(main())
