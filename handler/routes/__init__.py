"""The HTTP surface, one module per concern, one style: module-level handlers that take the
request, reach their collaborators through `services_of(request)` and call one service.
"""
