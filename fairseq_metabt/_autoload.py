"""Import every module of a plugin sub-package so its components register."""
import importlib
import os


def import_all_modules(package_name: str, package_dir: str) -> None:
    """Import ``package_name.X`` for each ``X.py`` in ``package_dir`` (sorted, private files skipped)."""
    for file in sorted(os.listdir(package_dir)):
        if file.endswith(".py") and not file.startswith("_"):
            importlib.import_module(package_name + "." + file[: -len(".py")])
