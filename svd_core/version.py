"""The version of svd_core (also in pyproject.toml), in a module of its own so that any module can
name it without importing the package."""

__version__ = "0.1.0"
