"""Train to convergence: ``fairseq-train`` with early stopping on the dev set, and a record of how it ended.

Every system of a comparison is trained with the same :class:`Protocol` (patience counted in
validations, one validation interval in updates, one best-checkpoint metric). The update cap is a
safety net only: a run that reaches it before its patience ran out has *not* converged, and the
record says so ("capped, not converged"), so a table can never present an unconverged system as
if it had finished learning.
"""
import hashlib
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_metabt.data.raw_layout import sha256_file
from fairseq_metabt.errors import UserError
from fairseq_metabt.evidence import provenance
from fairseq_metabt.evidence.io import atomic_write_json, read_json

RECORD = "convergence.json"
LOG = "train.log"

# fairseq_cli/train.py: should_stop_early() logs this line when --patience runs out.
_EARLY_STOP = re.compile(r"early stop since valid performance hasn't improved for last (\d+) runs")
_VALID = re.compile(r"\| valid \| .*\| num_updates (\d+)")
_FIELD = r"\| {name} (-?[0-9.]+(?:e-?[0-9]+)?|inf|nan)"

# Options the protocol owns: a recipe that passes them itself would silently change the protocol.
OWNED = ("--patience", "--validate-interval-updates", "--validate-interval", "--save-interval-updates",
         "--save-interval", "--max-update", "--max-epoch", "--best-checkpoint-metric",
         "--maximize-best-checkpoint-metric", "--keep-interval-updates", "--save-dir")
# Options that make up a learning-rate schedule: they must agree between a method and its control.
# Options naming the checkpoint of another model a run starts from: its convergence is part of this run's record.
INITS = ("--finetune-from-model", "--forward-init", "--backward-init", "--restore-file")
SCHEDULE = ("--lr", "--lr-scheduler", "--warmup-updates", "--warmup-init-lr", "--optimizer", "--adam-betas",
            "--clip-norm", "--max-tokens", "--batch-size", "--update-freq", "--weight-decay", "--lr-shrink",
            "--lr-patience")


class ProtocolError(UserError):
    """A protocol setting that cannot give a fair, converged comparison (the message says the fix)."""


class TrainingFailed(RuntimeError):
    """fairseq-train itself failed (its own message is in the log); ``status`` is its exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class Protocol:
    """The stopping rule shared by every system of a comparison."""

    patience: int = 5
    validate_interval_updates: int = 50
    max_update: int = 20000
    metric: str = "loss"
    maximize: bool = False

    def check(self) -> None:
        if self.patience < 1:
            raise ProtocolError(f"patience {self.patience} < 1 (early stopping needs --patience >= 1)")
        if self.validate_interval_updates < 1:
            raise ProtocolError(f"validation interval {self.validate_interval_updates} < 1 update")
        if self.max_update < self.validate_interval_updates * (self.patience + 1):
            raise ProtocolError(
                f"update cap {self.max_update} is shorter than the shortest early stop "
                f"({self.validate_interval_updates} x (patience {self.patience} + 1) updates); raise --max-update")

    def fairseq_args(self) -> List[str]:
        """The fairseq-train options that implement the protocol.

        Validation and saving happen only every ``validate_interval_updates`` updates (the epoch
        intervals are pushed out of reach), so patience means the same number of updates for
        every system whatever its epoch size.
        """
        args = ["--patience", str(self.patience), "--validate-interval-updates", str(self.validate_interval_updates),
                "--save-interval-updates", str(self.validate_interval_updates), "--keep-interval-updates", "1",
                "--validate-interval", "1000000", "--save-interval", "1000000", "--no-epoch-checkpoints",
                "--max-update", str(self.max_update), "--max-epoch", "0",
                "--best-checkpoint-metric", self.metric]
        if self.maximize:
            args.append("--maximize-best-checkpoint-metric")
        return args


@dataclass
class Record:
    """How one training run ended (``SAVE_DIR/convergence.json``)."""

    converged: bool
    reason: str
    num_updates: int
    best_update: Optional[int]
    best: Optional[float]
    metric: str
    protocol: Dict[str, object]
    schedule: Dict[str, str]
    warmup_updates: int = 0
    finetune_from: Optional[str] = None
    wall_s: float = 0.0
    command: str = ""
    validations: List[Tuple[int, float]] = field(default_factory=list)
    # provenance (written by :func:`train`; absent from records made before it recorded them)
    commit: Optional[str] = None
    dirty: Optional[bool] = None
    versions: Dict[str, Optional[str]] = field(default_factory=dict)
    starts: int = 1
    early_stop_state_kept: Optional[bool] = None
    depends_on: List[Dict[str, object]] = field(default_factory=list)
    vocab_sha256: Optional[str] = None  # the dictionaries trained with (:func:`vocab_fingerprint`)

    @property
    def status(self) -> str:
        return "converged" if self.converged else "capped, not converged"


def option_values(args: Sequence[str], names: Sequence[str]) -> Dict[str, str]:
    """``{option: value}`` for the named options in a fairseq argument list (flags map to "")."""
    out: Dict[str, str] = {}
    for i, a in enumerate(args):
        key, eq, val = a.partition("=")
        if key in names:
            if eq:
                out[key] = val
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[key] = args[i + 1]
            else:
                out[key] = ""
    return out


def validations(log_text: str, metric: str) -> List[Tuple[int, float]]:
    """``[(num_updates, metric)]`` of every dev validation in a fairseq-train log."""
    pat = re.compile(_FIELD.format(name=re.escape(metric)))
    out = []
    for line in log_text.splitlines():
        m = _VALID.search(line)
        v = pat.search(line) if m else None
        if m and v:
            out.append((int(m.group(1)), float(v.group(1))))
    return out


def classify(log_text: str, protocol: Protocol, num_updates: Optional[int] = None) -> Tuple[bool, str]:
    """Did the run converge? Only an early stop by ``--patience`` counts.

    Anything else (the update cap, an epoch cap, a crash) is "not converged", with the reason.
    """
    if _EARLY_STOP.search(log_text):
        return True, f"early stop: no dev improvement in {protocol.patience} validations"
    if num_updates is not None and num_updates >= protocol.max_update:
        return False, f"capped at {protocol.max_update} updates before patience ran out"
    return False, "stopped before patience ran out (no early-stop line in the log)"


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[ ,|]", re.M)


def earlier_starts_wall(log_text: str, exe: str) -> float:
    """Seconds spent by the earlier starts of a resumed run, from fairseq's log timestamps.

    A start that was killed writes no record, so its time is the span between the first and the last
    timestamped line of its part of the log (one ``# <fairseq-train ...>`` header per start); the last
    start, the one that just ended, is not counted here (the caller measured it).
    """
    import datetime

    parts = re.split(r"^# " + re.escape(exe) + " .*$", log_text, flags=re.M)[1:-1]
    total = 0.0
    for part in parts:
        stamps = _STAMP.findall(part)
        if len(stamps) >= 2:
            first, last = (datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
            total += max(0.0, (last - first).total_seconds())
    return total


def _best(vals: List[Tuple[int, float]], maximize: bool) -> Tuple[Optional[int], Optional[float]]:
    if not vals:
        return None, None
    upd, val = (max if maximize else min)(vals, key=lambda uv: uv[1])
    return upd, val


def check_warmup(protocol: Protocol, train_args: Sequence[str]) -> int:
    """A stage must be able to run past its warm-up: the shortest early stop is
    ``validate_interval_updates * (patience + 1)`` updates."""
    opts = option_values(train_args, ("--warmup-updates", "--lr-scheduler"))
    warmup = int(float(opts.get("--warmup-updates", "0") or 0))
    if opts.get("--lr-scheduler", "fixed") != "fixed" and warmup >= protocol.validate_interval_updates * (
            protocol.patience + 1):
        raise ProtocolError(
            f"--warmup-updates {warmup} is as long as the shortest early stop "
            f"({protocol.validate_interval_updates} x (patience {protocol.patience} + 1) updates): a stage could end "
            "inside its warm-up; shorten the warm-up or raise the patience")
    return warmup


def whole_batches(train_args: Sequence[str]) -> List[str]:
    """``--required-batch-size-multiple 1`` unless the training arguments set it.

    fairseq's default multiple (8) makes ``batch_by_size`` drop the last ``n % 8`` items of a dataset: the
    selection dev set would lose up to 7 pairs (150 pairs: 144 scored) and training up to 7 of its longest
    pairs every epoch.  Every system of a comparison gets the same setting; a recipe that wants multiples
    of 8 on GPUs passes the option itself."""
    return [] if option_values(train_args, ("--required-batch-size-multiple",)) else [
        "--required-batch-size-multiple", "1"]


def train(save_dir: str, train_args: Sequence[str], protocol: Protocol, fairseq_train: Optional[str] = None,
          echo: bool = True) -> Record:
    """Run ``fairseq-train`` under the protocol into ``save_dir`` and write its :class:`Record`.

    A finished run (its record and ``checkpoint_best.pt`` exist) is reused; an interrupted one
    resumes from ``checkpoint_last.pt`` as fairseq does.
    """
    protocol.check()
    clash = option_values(train_args, OWNED)
    if clash:
        raise ProtocolError(f"{', '.join(sorted(clash))} belong to the protocol; remove them from the training "
                            "arguments and set --patience/--validate-every/--max-update of the protocol instead")
    warmup = check_warmup(protocol, train_args)
    record_path = os.path.join(save_dir, RECORD)
    if os.path.exists(record_path) and os.path.exists(os.path.join(save_dir, "checkpoint_best.pt")):
        rec = load(save_dir)
        if echo:
            print(f"[evidence] reusing {save_dir}: {rec.status}, best {rec.metric} {rec.best} at update "
                  f"{rec.best_update}", flush=True)
        return rec
    os.makedirs(save_dir, exist_ok=True)
    git = provenance.git_state()
    exe = fairseq_train or _console_script("fairseq-train")
    cmd = [exe, *train_args, *protocol.fairseq_args(), *whole_batches(train_args), "--save-dir", save_dir]
    log_path = os.path.join(save_dir, LOG)
    start = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"# {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
    wall = time.time() - start
    if rc != 0:
        raise TrainingFailed(f"fairseq-train exited with status {rc} in {save_dir} (its output: {log_path}; fix the "
                             "error it reports and re-run: training resumes from checkpoint_last.pt)", rc)
    with open(log_path, encoding="utf-8") as f:
        text = f.read()
    vals = validations(text, protocol.metric)
    last_run = text[text.rfind("# " + exe):]
    num_updates = _num_updates(save_dir, vals)
    converged, reason = classify(last_run, protocol, num_updates)
    best_update, best = _best(vals, protocol.maximize)
    rec = Record(converged=converged, reason=reason, num_updates=num_updates, best_update=best_update, best=best,
                 metric=protocol.metric, protocol=asdict(protocol),
                 schedule=option_values(train_args, SCHEDULE), warmup_updates=warmup,
                 finetune_from=option_values(train_args, ("--finetune-from-model",)).get("--finetune-from-model"),
                 # every start counts: a resumed run's wall time includes the starts before it
                 wall_s=round(wall + earlier_starts_wall(text, exe), 1), command=shlex.join(cmd), validations=vals,
                 commit=git["commit"], dirty=git["dirty"], versions=provenance.versions(),
                 starts=len(re.findall(r"^# " + re.escape(exe) + " ", text, re.M)),  # one header per start
                 early_stop_state_kept=option_values(train_args, ("--lr-scheduler",)).get("--lr-scheduler")
                 in provenance.KEEPS_EARLY_STOP_STATE,
                 depends_on=dependencies(train_args), vocab_sha256=vocab_fingerprint(train_args))
    atomic_write_json(record_path, asdict(rec))
    if echo:
        print(f"[evidence] {save_dir}: {rec.status} ({reason}); best {rec.metric} {best} at update {best_update} of "
              f"{num_updates}; {wall:.0f}s", flush=True)
    return rec


def vocab_fingerprint(train_args: Sequence[str]) -> Optional[str]:
    """One sha256 over the distinct fairseq dictionaries (``dict*.txt``, by content: a joint dictionary copied
    under other names counts once) of the run's data directory (the first positional argument; its first
    ``:`` shard). Systems paired on a seed should share it; runs trained in other sessions on a re-made
    binarisation can be checked against it. None when there is none."""
    data = train_args[0] if train_args and not str(train_args[0]).startswith("-") else None
    data = data.split(os.pathsep)[0] if data else None
    if not data or not os.path.isdir(data):
        return None
    contents = {sha256_file(os.path.join(data, name)) for name in os.listdir(data)
                if name.startswith("dict") and name.endswith(".txt")}
    return hashlib.sha256(" ".join(sorted(contents)).encode()).hexdigest() if contents else None


def dependencies(train_args: Sequence[str]) -> List[Dict[str, object]]:
    """The convergence of every model a run starts from (``--finetune-from-model``, ``--forward-init`` ...):
    a gain over a control means little if the model both start from had not converged."""
    out: List[Dict[str, object]] = []
    for flag, path in option_values(train_args, INITS).items():
        d = os.path.dirname(os.path.abspath(path)) if path else ""
        entry: Dict[str, object] = {"flag": flag, "path": os.path.abspath(path) if path else path}
        if d and os.path.exists(os.path.join(d, RECORD)):
            rec = load(d)
            entry.update(converged=rec.converged, status=rec.status, num_updates=rec.num_updates,
                         best_update=rec.best_update, commit=rec.commit, wall_s=rec.wall_s, starts=rec.starts)
        else:
            entry.update(converged=None, status="no training record")
        out.append(entry)
    return out


def _num_updates(save_dir: str, vals: List[Tuple[int, float]]) -> int:
    """Updates done, from the last checkpoint (falls back on the last validation)."""
    last = os.path.join(save_dir, "checkpoint_last.pt")
    if os.path.exists(last):
        import torch

        import fairseq_metabt  # noqa: F401  (checkpoint allow-list)

        state = torch.load(last, map_location="cpu", weights_only=True)
        n = state.get("optimizer_history", [{}])[-1].get("num_updates")
        if n is not None:
            return int(n)
    return vals[-1][0] if vals else 0


def load(save_dir: str) -> Record:
    """The :class:`Record` of a finished run (raises FileNotFoundError naming the file)."""
    data = read_json(os.path.join(save_dir, RECORD))
    data["validations"] = [tuple(v) for v in data.get("validations", [])]
    return Record(**data)


def _console_script(name: str) -> str:
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else name


def same_schedule(records: Dict[str, Record]) -> List[str]:
    """Systems whose learning-rate schedule or stopping rule differs from the first one's (fair fine-tuning)."""
    items = list(records.items())
    if not items:
        return []
    ref_name, ref = items[0]
    bad = []
    for name, rec in items[1:]:
        if rec.schedule != ref.schedule or rec.protocol != ref.protocol:
            bad.append(f"{name} differs from {ref_name}: schedule {rec.schedule} vs {ref.schedule}, "
                       f"protocol {rec.protocol} vs {ref.protocol}")
    return bad

