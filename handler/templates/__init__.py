"""Named workflows: manifests, parameters and the registry that hot reloads them.

registry.py   Templates: the folder's templates, reloaded when it changes; render for /predict
loading.py    reading and checking a folder's manifests, graphs and _params.json
params.py     Param, Template, and a request's values resolved and checked
"""
