"""A protocol-faithful ComfyUI 0.33.0 stand-in for the project's integration tests.

It speaks ComfyUI's HTTP + WebSocket protocol, validates prompts against a recorded
`object_info`, and really executes the core no-model nodes with numpy and Pillow.
"""

COMFYUI_VERSION = "0.33.0"
