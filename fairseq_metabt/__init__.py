"""fairseq-metabt: a fairseq plugin for low-resource NMT methods.

Load it with ``--user-dir`` (see ``python -m fairseq_metabt.userdir``) or by
importing it.  Importing applies the version accommodations in
:mod:`fairseq_metabt.compat` first, installs the one-line report of the
plugin's user errors (:mod:`fairseq_metabt.errors`), then registers the
plugin's tasks, criterions and models with fairseq.
"""
__version__ = "0.1.0"

from fairseq_metabt import compat as _compat

_compat.apply()

from fairseq_metabt import errors as _errors  # noqa: E402

_errors.install_excepthook()

from fairseq_metabt import criterions, lr_schedulers, models, tasks  # noqa: E402,F401  (registration)
