"""Package layout for setuptools (metadata lives in pyproject.toml).

The source tree keeps the core (``mmldm/``), the built-in plugins
(``plugins/<package>/``) and the Hydra config tree (``configs/``) side by
side; the wheel installs them as the packages ``mmldm``, ``mmldm_*`` and
``mmldm_configs``, so an installed copy finds its configs and plugins.
"""

from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

here = Path(__file__).parent
# config folders hold only YAML files (no __init__.py): listed as namespace packages, so setuptools
# installs them as package data without warning that it guesses
EXCLUDE = ["*__pycache__*", "*.egg-info*"]
core = find_packages(include=["mmldm", "mmldm.*"])
plugin_packages = find_namespace_packages("plugins", include=["mmldm_*"], exclude=EXCLUDE)
configs = ["mmldm_configs", *(f"mmldm_configs.{p}" for p in find_namespace_packages("configs", exclude=EXCLUDE))]
package_dir = {p: f"plugins/{p}" for p in plugin_packages if "." not in p}
package_dir["mmldm_configs"] = "configs"

setup(packages=core + plugin_packages + configs, package_dir=package_dir)
