"""The plugin registers its components when loaded as a fairseq --user-dir."""
import os
import sys

from conftest import USER_DIR, run


def test_userdir_helper_prints_package_dir():
    out = run([sys.executable, "-m", "fairseq_metabt.userdir"], cwd="/").stdout.strip().splitlines()[-1]
    assert os.path.samefile(out, USER_DIR)


def test_architectures_registered_through_user_dir():
    code = (
        "from fairseq import utils; from argparse import Namespace;"
        f"utils.import_user_module(Namespace(user_dir={USER_DIR!r}));"
        "from fairseq.models import ARCH_MODEL_REGISTRY as R;"
        "print(sorted(a for a in R if a.startswith('transformer_lowres')))"
    )
    out = run([sys.executable, "-c", code], cwd="/").stdout
    assert "['transformer_lowres_small', 'transformer_lowres_tiny']" in out


def test_options_helper_lists_each_components_own_flags():
    out = run([sys.executable, "-m", "fairseq_metabt.options", "meta_backtranslation", "stgs_reconstruction",
               "latent_depth_transformer"], cwd="/").stdout
    for flag in ("--meta-reward", "--backward-lr", "--stgs-tau", "--reconstruction-weight",
                 "--latent-tau", "--decoder-latent-layers"):
        assert flag in out, flag
    assert "learning rate of the backward model" in out, "help texts from the config dataclasses"
    proc = run([sys.executable, "-m", "fairseq_metabt.options", "no_such_component"], check=False, cwd="/")
    assert proc.returncode == 2 and "no task, criterion or model is registered as 'no_such_component'" in proc.stdout
