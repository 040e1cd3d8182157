"""Named workflows: manifests, parameters and the registry that hot reloads them."""
