"""Plugin models: importing this package registers every component in its modules."""
import os

from fairseq_metabt._autoload import import_all_modules

import_all_modules(__name__, os.path.dirname(__file__))
