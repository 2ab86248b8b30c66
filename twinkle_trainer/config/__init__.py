"""Training configuration: typed Args resolved from defaults, .env, environment, YAML/TOML and the command line.

Standard library + PyYAML + python-dotenv only; importing it never imports torch.
"""

from twinkle_trainer.config.resolve import CLI, ConfigResolver, ConfigSource, FileSource
from twinkle_trainer.config.schema import Args, ConfigError
from twinkle_trainer.config.validate import validate_args

__all__ = ["CLI", "Args", "ConfigError", "ConfigResolver", "ConfigSource", "FileSource", "validate_args"]
