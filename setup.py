"""The design's folders install under the one package name `sensorcity` (sensorcity.gateway,
sensorcity.tools.sim, ...), so nothing generic lands at the top of site-packages: each folder's
packages are found and mapped by package_dir. Namespace packages, so that the folders of data
(the emulated boards' files, the QEMU recipe, the unit, the vectors) install as what they are,
with their files listed in pyproject.toml's package-data. The rest is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

FOLDERS = ("gateway", "tools", "firmware", "protocol", "boards")

setup(
    packages=["sensorcity"] + [
        f"sensorcity.{pkg}" for folder in FOLDERS
        for pkg in find_namespace_packages(include=[folder, f"{folder}.*"],
                                           exclude=["*.__pycache__"])],
    package_dir={"sensorcity": "sensorcity", **{f"sensorcity.{f}": f for f in FOLDERS}},
)
