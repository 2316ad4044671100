"""fairseq-metabt: a fairseq plugin for low-resource NMT research methods.

Install with ``bash scripts/setup_env.sh`` (recommended): it installs torch and
``fairseq-fixed`` in the order that avoids building fairseq against a freshly
downloaded CUDA torch, then this package in editable mode.
"""
import sys

from setuptools import find_packages, setup

# Official fairseq 0.12.2 does not import on Python >= 3.11; fairseq-fixed ships
# the same ``fairseq`` package with the fixes.  Never depend on plain
# ``fairseq`` there: pip would install the broken sdist over the same package.
if sys.version_info >= (3, 11):
    FAIRSEQ_REQ = "fairseq-fixed>=0.12.3"
else:
    FAIRSEQ_REQ = "fairseq>=0.12.2"

setup(
    name="fairseq-metabt",
    version="0.1.0",
    description=(
        "fairseq plugin: meta back-translation, differentiable data selection, "
        "wake-sleep back-translation, STGS reconstruction and latent depth"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["fairseq_metabt", "fairseq_metabt.*"]),
    # torch is deliberately not listed: fairseq requires it, and naming it here
    # again would let pip replace a local CPU build with the newest CUDA wheel.
    install_requires=[
        FAIRSEQ_REQ,
        "sacrebleu>=2.0",
        "sentencepiece>=0.1.99",
        "numpy",
        # fairseq's --tensorboard-logdir writer (light; no TensorFlow needed)
        "tensorboardX",
    ],
    extras_require={
        # the plot scripts (scripts/plot_*.py) are exercised by the tests; pytest-xdist runs the suite on
        # every core (scripts/test.sh)
        "test": ["pytest>=7", "pytest-xdist>=3", "matplotlib"],
        "plots": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "fairseq-metabt-userdir = fairseq_metabt.userdir:main",
        ],
    },
)
