"""All configuration, read from the environment in one place.

Every module takes a `Settings` (or the section of it it needs); nothing else reads `os.environ`.
Each setting is declared once, in its section's module, with its variable, default and one line
of help; docs/configuration.md is generated from those declarations
(`python -m handler.config --markdown > docs/configuration.md`).
"""

from handler.config.cloud import ServiceRole
from handler.config.declare import ConfigError
from handler.config.http import CLOUD_RUN_MAX_REQUEST_BYTES
from handler.config.settings import SECTIONS, Settings

__all__ = ["CLOUD_RUN_MAX_REQUEST_BYTES", "SECTIONS", "ConfigError", "ServiceRole", "Settings"]
