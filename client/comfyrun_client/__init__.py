"""A small client for comfyrun, the ComfyUI service on Cloud Run: submit a workflow or a named
template, sync or async, follow its progress, save its outputs. Depends only on `requests`.

    from comfyrun_client import Client
    client = Client("https://svc-….run.app", id_token=True)
"""

from comfyrun_client.client import Client, ClientError, RawOutput, identity_token, image_entry

__all__ = ["Client", "ClientError", "RawOutput", "identity_token", "image_entry"]
__version__ = "0.1.0"
