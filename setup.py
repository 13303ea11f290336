"""Package layout (everything else is in pyproject.toml).

The repository keeps its top-level folders `engine/` and `plugins/`, but the wheel ships them as
`inspector_engine` and `inspector_plugins`: generic top-level names such as `engine` or `plugins`
would collide with a user's own modules.
"""
from setuptools import find_packages, setup

RENAMED = {"inspector_engine": "engine", "inspector_plugins": "plugins"}
"""Import name -> folder in this repository."""

packages = find_packages(include=["inspector", "inspector.*"])
for name, folder in RENAMED.items():
    packages += [name, *(f"{name}.{sub}" for sub in find_packages(where=folder))]

setup(packages=packages, package_dir=dict(RENAMED))
