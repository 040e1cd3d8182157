"""All configuration, read from the environment in one place.

The composition roots read a `Settings`; every other module takes the sections of it it reads
(`HttpSettings`, `UrlSettings`, ...). Nothing else reads `os.environ`.
Each setting is declared once, in its section's module, with its variable, default and one line
of help; docs/configuration.md is generated from those declarations
(`python -m handler.config --markdown > docs/configuration.md`).
"""

from handler.config.access import AccessSettings
from handler.config.cloud import CloudSettings, ServiceRole
from handler.config.comfyui import ComfyUISettings
from handler.config.declare import ConfigError
from handler.config.http import CLOUD_RUN_MAX_REQUEST_BYTES, HttpSettings
from handler.config.jobs import JobSettings
from handler.config.models import ModelSettings
from handler.config.observability import ObservabilitySettings
from handler.config.settings import SECTIONS, Settings
from handler.config.urls import UrlSettings
from handler.config.webhooks import WebhookSettings

__all__ = [
    "CLOUD_RUN_MAX_REQUEST_BYTES",
    "SECTIONS",
    "AccessSettings",
    "CloudSettings",
    "ComfyUISettings",
    "ConfigError",
    "HttpSettings",
    "JobSettings",
    "ModelSettings",
    "ObservabilitySettings",
    "ServiceRole",
    "Settings",
    "UrlSettings",
    "WebhookSettings",
]
