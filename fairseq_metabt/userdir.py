"""Print the path to pass as ``fairseq-train --user-dir``.

Usage::

    fairseq-train DATA --user-dir "$(python -m fairseq_metabt.userdir)" ...
"""
import os


def user_dir() -> str:
    """Absolute path of the ``fairseq_metabt`` package directory."""
    return os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    print(user_dir())


if __name__ == "__main__":
    main()
