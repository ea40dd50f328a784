"""Serving: ``n3deploy serve`` on Ray Serve (KServe v2 / Triton HTTP protocol, image endpoint) and
Triton model repositories (``n3deploy triton-repo``).

Importing this package imports neither Ray nor tritonclient; :mod:`n3deploy.serving.app` and
:mod:`n3deploy.serving.runner` need ``n3deploy[serve]``.
"""

from .settings import DEFAULT_MAX_PIXELS, ServeSettings

__all__ = ["ServeSettings", "DEFAULT_MAX_PIXELS"]
