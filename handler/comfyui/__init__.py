"""ComfyUI as a collaborator: the supervised child process, its HTTP API and websocket, the
node catalogue, progress, the GPU probe, the graph check, and the files in and out of its folders.
"""
