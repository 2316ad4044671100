"""Learning-rate schedules of the plugin (registered with fairseq on import)."""
from fairseq_metabt.lr_schedulers import plateau_updates  # noqa: F401  (registration)
