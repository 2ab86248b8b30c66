"""python -m twinkle_trainer CONFIG [--key value ...]   |   python -m twinkle_trainer config show [...]"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["config"]:
        from twinkle_trainer.config.show import main as config_main

        return config_main(argv[1:])
    from twinkle_trainer.train import main as train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
