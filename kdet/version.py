"""kdet's version, in a module of its own so that any kdet module can read it without importing ``kdet``.

``pyproject.toml`` reads it too (``[tool.setuptools.dynamic]``): one place to bump.
"""

__version__ = "0.1.0"
