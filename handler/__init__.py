"""ComfyUI as a serverless API: the service that runs inside the Cloud Run container."""

__version__ = "0.1.0"
