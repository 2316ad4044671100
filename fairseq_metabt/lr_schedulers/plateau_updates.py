"""``--lr-scheduler plateau_updates``: reduce the learning rate on a dev plateau, validating every N updates.

fairseq's own ``reduce_lr_on_plateau`` is stepped only at epoch ends, with the loss of a validation
that happened at that very update; with ``--validate-interval-updates`` (the evidence protocol's
validation every V updates) that almost never coincides, so it never shrinks the learning rate.
This schedule reads instead the count fairseq keeps for ``--patience``: the number of validations
since the last new best (``fairseq_cli.train.should_stop_early.num_runs``). After a linear warm-up
the learning rate stays at ``--lr`` and is multiplied by ``--lr-shrink`` after every
``--lr-patience`` validations without improvement; fairseq's ``--patience`` then stops the run. So a
run anneals before it stops, and continuing it at the same or a lower learning rate no longer gains:
the convergence the evidence protocol's precondition asks for.
"""
import logging
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import II

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler

from fairseq_metabt import validate
from fairseq_metabt.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class PlateauUpdatesConfig(FairseqDataclass):
    warmup_updates: int = field(default=0, metadata={"help": "warm the learning rate up linearly for N updates"})
    warmup_init_lr: float = field(default=-1, metadata={"help": "learning rate at update 0 of the warm-up "
                                                                  "(default: 0 with a warm-up, else --lr)"})
    lr_shrink: float = field(default=0.5, metadata={"help": "multiply the learning rate by this factor on a plateau"})
    lr_patience: int = field(
        default=2, metadata={"help": "a plateau: this many validations in a row without a new best dev score"})
    min_lr_ratio: float = field(
        default=1e-3, metadata={"help": "never shrink below this fraction of --lr"})
    lr: List[float] = II("optimization.lr")
    patience: int = II("checkpoint.patience")


def _early_stopping_fn():
    """fairseq's ``should_stop_early`` (in ``fairseq_cli.train``, or ``__main__`` under ``python -m``)."""
    for name in ("fairseq_cli.train", "__main__"):
        fn = getattr(sys.modules.get(name), "should_stop_early", None)
        if fn is not None:
            return fn
    return None


def validations_without_improvement() -> Optional[int]:
    """fairseq's own count of validations since the last new best (kept for ``--patience``), or None.

    ``should_stop_early`` keeps the count as a function attribute once the first validation has run."""
    fn = _early_stopping_fn()
    if fn is not None and hasattr(fn, "num_runs"):
        return int(fn.num_runs)
    return None


@register_lr_scheduler("plateau_updates", dataclass=PlateauUpdatesConfig)
class PlateauUpdatesSchedule(FairseqLRScheduler):
    """Linear warm-up, then ``lr * lr_shrink ** k`` after the k-th dev plateau of ``lr_patience`` validations."""

    def __init__(self, cfg: PlateauUpdatesConfig, optimizer):
        super().__init__(cfg, optimizer)
        if isinstance(cfg.lr, Collection) and len(cfg.lr) > 1:
            raise UserError("--lr-scheduler plateau_updates takes one --lr (got several)")
        if not 0.0 < cfg.lr_shrink < 1.0:
            raise UserError(f"--lr-shrink must be in (0, 1), got {cfg.lr_shrink}")
        if cfg.lr_patience < 1:
            raise UserError(f"--lr-patience must be >= 1, got {cfg.lr_patience}")
        if cfg.patience is None or cfg.patience <= 0:
            raise UserError("--lr-scheduler plateau_updates counts validations without improvement as fairseq's "
                            "early stopping does: pass --patience P (> --lr-patience) and --validate-interval-updates")
        validate.config(cfg)  # then finite and in range
        if cfg.lr_patience >= cfg.patience:  # legal (e.g. a smoke test with --patience 1), but say what it means
            logger.warning("--lr-patience %d >= --patience %d: the run stops before the learning rate is ever "
                           "reduced (use --lr-patience < --patience to anneal before stopping)",
                           cfg.lr_patience, cfg.patience)
        self.peak = cfg.lr[0] if isinstance(cfg.lr, Collection) else cfg.lr
        self.init_lr = cfg.warmup_init_lr if cfg.warmup_init_lr >= 0 else (0.0 if cfg.warmup_updates > 0 else self.peak)
        self.shrinks = 0  # plateaus so far (saved in the checkpoint)
        self._stall_shrinks = 0  # shrinks during the current run of validations without a new best
        self._last_runs = 0
        self._restore_patience: Optional[Dict] = None  # fairseq's early-stopping state, from a checkpoint
        self.lr = self.init_lr
        self.optimizer.set_lr(self.lr)

    def _current(self, num_updates: int) -> float:
        if num_updates < self.cfg.warmup_updates:
            return self.init_lr + (self.peak - self.init_lr) * num_updates / self.cfg.warmup_updates
        return max(self.peak * self.cfg.lr_shrink ** self.shrinks, self.peak * self.cfg.min_lr_ratio)

    def step_update(self, num_updates: int) -> float:
        """Called by the trainer after every update; validations happen between two calls."""
        if self._restore_patience is not None:
            self._resume_early_stopping()
        runs = validations_without_improvement()
        if runs is not None and num_updates >= self.cfg.warmup_updates:
            if runs < self._last_runs or runs == 0:  # a new best: a new stall starts from zero
                self._stall_shrinks = 0
            if runs // self.cfg.lr_patience > self._stall_shrinks:
                self._stall_shrinks += 1
                self.shrinks += 1
            self._last_runs = runs
        self.lr = self._current(num_updates)
        self.optimizer.set_lr(self.lr)
        return self.lr

    def step(self, epoch: int, val_loss: Optional[float] = None) -> float:
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def _resume_early_stopping(self) -> None:
        """Give fairseq's ``--patience`` count back to a resumed run.

        fairseq keeps it in function attributes that no checkpoint holds, so a resumed run would take the
        first dev score after the restart as its best and wait ``--patience`` validations from there: a
        killed and resumed run would train longer than an uninterrupted one under the same protocol."""
        state = self._restore_patience
        fn = _early_stopping_fn()
        if fn is None or hasattr(fn, "best"):  # not under fairseq-train, or it has already validated
            self._restore_patience = None
            return
        best = state.get("patience_best")
        if best is None:  # a checkpoint written before this state was saved: fairseq's own best, which
            # checkpoint_utils restores only after the trainer's first lr step: try again at the next update
            from fairseq import checkpoint_utils
            best = getattr(checkpoint_utils.save_checkpoint, "best", None)
            if best is None:
                return
        self._restore_patience = None
        fn.best = best
        runs = state.get("patience_runs")
        fn.num_runs = int(self._last_runs if runs is None else runs)
        logger.info("resumed early stopping: best %s, %d validation(s) without improvement", best, fn.num_runs)

    def state_dict(self) -> Dict:
        fn = _early_stopping_fn()
        return {"best": self.best, "shrinks": self.shrinks, "stall_shrinks": self._stall_shrinks,
                "last_runs": self._last_runs, "patience_best": getattr(fn, "best", None),
                "patience_runs": getattr(fn, "num_runs", None)}

    def load_state_dict(self, state_dict: Dict) -> None:
        self.best = state_dict.get("best")
        self.shrinks = int(state_dict.get("shrinks", 0))
        self._stall_shrinks = int(state_dict.get("stall_shrinks", 0))
        self._last_runs = int(state_dict.get("last_runs", 0))
        self._restore_patience = dict(state_dict)
