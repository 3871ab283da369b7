"""Package layout for setuptools (metadata lives in pyproject.toml).

The source tree keeps the core (``mmldm/``), the built-in plugins
(``plugins/<package>/``) and the Hydra config tree (``configs/``) side by
side; the wheel installs them as the packages ``mmldm``, ``mmldm_*`` and
``mmldm_configs``, so an installed copy finds its configs and plugins.
"""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
core = find_packages(include=["mmldm", "mmldm.*"])
plugin_packages = find_packages("plugins", include=["mmldm_*"])
package_dir = {p: f"plugins/{p}" for p in plugin_packages if "." not in p}
package_dir["mmldm_configs"] = "configs"

setup(packages=core + plugin_packages + ["mmldm_configs"], package_dir=package_dir)
