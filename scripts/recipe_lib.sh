# shellcheck shell=bash
# The one recipe interface, sourced by scripts/quickstart.sh and every examples/*/run_miniature.sh.
#
# Shared flags (docs/data.md, "Running a recipe on your corpus"):
#   --raw-dir DIR        corpus in the raw layout (default: the recipe's synthetic corpus, generated per seed)
#   --src LANG           source language (default: the recipe's, e.g. lrl)
#   --tgt LANG           target language (default: the recipe's, e.g. tgt)
#   --related L1,L2,...  other languages a multilingual recipe uses (DDS sources, latent-depth languages)
#   --seeds "1 2 3"      training seeds; Δ and p are paired by seed
#   --work-dir DIR       where runs, checkpoints and results/summary.json go
#   --patience P         validations without dev improvement before a system stops (same for every system)
#   --validate-every V   updates between dev validations
#   --max-update N       safety cap on updates; a system reaching it is reported "not converged"
#   -h, --help           the recipe's usage and these flags
#
# A recipe sets RECIPE_USAGE and its defaults (SRC, TGT, RELATED, SEEDS, WORK_DIR, PATIENCE,
# VALIDATE_EVERY, MAX_UPDATE) before `recipe_parse "$@"`; afterwards its own options are in
# RECIPE_ARGS (parse them with a `case`), and the functions below run the evidence protocol
# (python -m fairseq_metabt.evidence) so that every recipe trains, scores and compares the same way.

RECIPE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Provenance: the environment knobs any recipe reads. Those the user set at launch go into the recorded
# command line; their effective values (after each recipe's defaults) go into summary.json (ev_compare).
RECIPE_KNOBS="ARCH MAX_TOKENS LR WARMUP LR_PATIENCE LR_SHRINK FT_LR FT_MAX_TOKENS FT_WARMUP BT_FORWARD LR_ITER WARMUP_ITER UPSAMPLE
  DROPOUT ATTENTION_DROPOUT ACTIVATION_DROPOUT LABEL_SMOOTHING VOCAB_SIZE
  GATE_UPDATES REL SIZES METRIC BEAM GEN_MAX_TOKENS EVAL_SUBSETS JOBS OMP_NUM_THREADS"
RECIPE_ENV_SET=""
for _k in $RECIPE_KNOBS; do
  if [ -n "${!_k+x}" ]; then RECIPE_ENV_SET+="$_k=$(printf '%q' "${!_k}") "; fi
done
# the script as the user ran it, relative to the repository when it lies inside it
RECIPE_SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"; RECIPE_SCRIPT="${RECIPE_SCRIPT#"$RECIPE_ROOT"/}"
PY="${PYTHON:-$RECIPE_ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3 || command -v python)"
export PATH="$(dirname "$PY"):$PATH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
USER_DIR="$RECIPE_ROOT/fairseq_metabt"

RECIPE_SHARED_HELP='Shared flags (every recipe; docs/data.md):
  --raw-dir DIR        a corpus in the raw layout (default: the synthetic corpus of the recipe)
  --src LANG           source language              --tgt LANG    target language
  --related L1,L2,...  other languages of a multilingual recipe
  --seeds "1 2 3"      training seeds (Δ and p are paired by seed)
  --work-dir DIR       runs, checkpoints, results/summary.json
  --patience P         dev validations without improvement before a system stops
  --validate-every V   updates between dev validations
  --max-update N       safety cap; a system that reaches it is reported "not converged"
  -h, --help           this text'

# recipe_lowres: the model and regularisation the pair-level recipes (quickstart/MetaBT, reconstruction, wake-sleep)
# train by default, sized for about 2,000 training pairs: ARCH transformer_lowres_small, DROPOUT 0.3,
# ATTENTION_DROPOUT and ACTIVATION_DROPOUT 0.1, LABEL_SMOOTHING 0.2 and a VOCAB_SIZE 2000 joint vocabulary, each an
# environment knob (recorded). The former default (tiny, dropout 0.1, label smoothing 0.1, 4,000 pieces) over-fitted a
# real 2,000-pair corpus to 1.8 BLEU where this reaches 7.6 (docs/catalog_corpus.md). Sets LOWRES_REG, the flags.
recipe_lowres() {
  ARCH="${ARCH:-transformer_lowres_small}"; DROPOUT="${DROPOUT:-0.3}"; ATTENTION_DROPOUT="${ATTENTION_DROPOUT:-0.1}"
  ACTIVATION_DROPOUT="${ACTIVATION_DROPOUT:-0.1}"; LABEL_SMOOTHING="${LABEL_SMOOTHING:-0.2}"
  VOCAB_SIZE="${VOCAB_SIZE:-2000}"
  LOWRES_REG=(--dropout "$DROPOUT" --attention-dropout "$ATTENTION_DROPOUT" --activation-dropout "$ACTIVATION_DROPOUT"
              --label-smoothing "$LABEL_SMOOTHING")
}

recipe_die() { echo "fairseq-metabt: error: $*" >&2; exit 2; }

recipe_parse() {
  RECIPE_COMMAND="${RECIPE_ENV_SET}bash $(printf '%q' "$RECIPE_SCRIPT")"
  [ $# -eq 0 ] || RECIPE_COMMAND+="$(printf ' %q' "$@")"
  RAW_DIR="${RAW_DIR:-}"; RECIPE_ARGS=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -h|--help) printf '%s\n\n%s\n' "$RECIPE_USAGE" "$RECIPE_SHARED_HELP"; exit 0 ;;
      --raw-dir|--src|--tgt|--related|--seeds|--work-dir|--patience|--validate-every|--max-update)
        [ $# -ge 2 ] || recipe_die "$1 needs a value (see --help)"
        case "$1" in
          --raw-dir) [ -d "$2" ] || recipe_die "--raw-dir $2 is not a directory (give a corpus in the raw layout, docs/data.md)"
                     RAW_DIR="$(cd "$2" && pwd)" ;;
          --src) SRC="$2" ;; --tgt) TGT="$2" ;; --related) RELATED="$2" ;; --seeds) SEEDS="$2" ;;
          --work-dir) WORK_DIR="$2" ;; --patience) PATIENCE="$2" ;; --validate-every) VALIDATE_EVERY="$2" ;;
          --max-update) MAX_UPDATE="$2" ;;
        esac
        shift 2 ;;
      *) RECIPE_ARGS+=("$1"); shift ;;
    esac
  done
  recipe_check_seeds
  recipe_check_languages
  for n in "${PATIENCE:=5}" "${VALIDATE_EVERY:=50}" "${MAX_UPDATE:=20000}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || recipe_die "--patience/--validate-every/--max-update take positive integers, got '$n'"
  done
  recipe_check_work_dir
  if [ -n "$RAW_DIR" ]; then recipe_check_pair "$RAW_DIR" "$SRC" "$TGT"; fi
}

# recipe_check_seeds: SEEDS holds unique non-negative integers (read without globbing: "*" is refused,
# never expanded into file names); normalised to single spaces.
recipe_check_seeds() {
  local -a seeds; local s seen=" "
  read -r -a seeds <<< "$SEEDS"
  [ ${#seeds[@]} -ge 1 ] || recipe_die "--seeds needs at least one seed (e.g. --seeds \"1 2 3\")"
  for s in "${seeds[@]}"; do
    [[ "$s" =~ ^[0-9]+$ ]] || recipe_die "--seeds takes non-negative integers, got '$s' (e.g. --seeds \"1 2 3\")"
    s=$((10#$s))
    [[ "$seen" != *" $s "* ]] ||
      recipe_die "--seeds lists seed $s twice: two trainings would share one directory (list each seed once)"
    seen="$seen$s "
  done
  SEEDS="${seen# }"; SEEDS="${SEEDS% }"
}

# recipe_check_languages: SRC, TGT and every --related language are language codes (the raw layout's file
# names: no '.', '-', ',' or whitespace), pairwise different. Sets RELATED_LIST.
recipe_check_languages() {
  local l seen=" "
  RELATED_LIST=()
  IFS=',' read -r -a RELATED_LIST <<< "$RELATED"
  for l in "$SRC" "$TGT" "${RELATED_LIST[@]}"; do
    [[ "$l" =~ ^[A-Za-z0-9_]+$ ]] || recipe_die "'$l' is not a language code (--src/--tgt/--related take codes" \
      "such as lrl or de: letters, digits, _; --related separates them with commas)"
  done
  [ "$SRC" != "$TGT" ] || recipe_die "--src and --tgt are both $SRC (give two different languages)"
  for l in "${RELATED_LIST[@]}"; do
    [ "$l" != "$SRC" ] && [ "$l" != "$TGT" ] ||
      recipe_die "--related $RELATED contains $l, which is --src or --tgt (list only the other languages)"
    [[ "$seen" != *" $l "* ]] || recipe_die "--related lists $l twice (list each language once)"
    seen="$seen$l "
  done
}

# recipe_check_work_dir: WORK_DIR is a directory (created when missing); made absolute.
recipe_check_work_dir() {
  [ -n "$WORK_DIR" ] || recipe_die "--work-dir is empty (give a directory)"
  if [ -e "$WORK_DIR" ] && [ ! -d "$WORK_DIR" ]; then
    recipe_die "--work-dir $WORK_DIR exists and is not a directory (give a new or existing directory)"
  fi
  mkdir -p "$WORK_DIR" 2>/dev/null ||
    recipe_die "--work-dir $WORK_DIR cannot be created (check the path and its permissions, or choose another)"
  [ -w "$WORK_DIR" ] || recipe_die "--work-dir $WORK_DIR is not writable (make it writable or choose another)"
  WORK_DIR="$(cd "$WORK_DIR" && pwd)"
}

# recipe_unknown: a recipe's `case` default for options it does not know.
recipe_unknown() { recipe_die "unknown option $1 (see --help)"; }

# recipe_options FLAG VAR [FLAG VAR ...]: parse RECIPE_ARGS, the recipe's own options, each FLAG taking one value
# that is stored in VAR (set the defaults first); a FLAG without its value, or any other option, is refused.
recipe_options() {
  local -a specs=("$@"); local i var
  set -- "${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"}"
  while [ $# -gt 0 ]; do
    var=""
    for ((i = 0; i + 1 < ${#specs[@]}; i += 2)); do
      if [ "$1" = "${specs[i]}" ]; then var="${specs[i + 1]}"; fi
    done
    [ -n "$var" ] || recipe_unknown "$1"
    [ $# -ge 2 ] || recipe_die "$1 needs a value (see --help)"
    printf -v "$var" '%s' "$2"; shift 2
  done
}

# recipe_has_system SYSTEM: SYSTEMS (a space-separated list) names SYSTEM.
recipe_has_system() { [[ " $SYSTEMS " == *" $1 "* ]]; }

# recipe_check_systems CHOICES [SHOWN]: every system of SYSTEMS matches one of CHOICES (space-separated `case`
# patterns, e.g. stgs-beta*), else "--systems: unknown system S (SHOWN)"; SHOWN defaults to CHOICES.
recipe_check_systems() {
  local -a choices; local s c ok
  read -r -a choices <<< "$1"
  for s in $SYSTEMS; do
    ok=""
    for c in "${choices[@]}"; do
      # shellcheck disable=SC2053
      if [[ "$s" == $c ]]; then ok=1; fi
    done
    [ -n "$ok" ] || recipe_die "--systems: unknown system $s (${2:-$1})"
  done
}

# recipe_also A:B...: sets ALSO to ev_compare's flags `--also A:B ...` for each pair whose two systems SYSTEMS
# lists, in the order given (empty when none does).
recipe_also() {
  local pair; ALSO=()
  for pair in "$@"; do
    if recipe_has_system "${pair%%:*}" && recipe_has_system "${pair#*:}"; then ALSO+=("$pair"); fi
  done
  [ ${#ALSO[@]} -eq 0 ] || ALSO=(--also "${ALSO[@]}")
}

# recipe_require_systems WHY SYSTEM...: SYSTEMS names every SYSTEM, else "--systems must include WHY".
recipe_require_systems() {
  local why="$1" s; shift
  for s in "$@"; do recipe_has_system "$s" || recipe_die "--systems must include $why"; done
}

# recipe_check_pair RAW SRC TGT: the raw directory has a train split of SRC-TGT (either direction).
recipe_check_pair() {
  local raw="$1" s="$2" t="$3"
  if [ ! -f "$raw/train.$s-$t.$s" ] && [ ! -f "$raw/train.$t-$s.$s" ]; then
    recipe_die "$raw has no train.$s-$t.$s nor train.$t-$s.$s (check --src/--tgt against the file names, docs/data.md)"
  fi
}

# recipe_corpus SEED PRESET SIZES [generator args...]: the raw corpus of a seed: --raw-dir if given,
# else the synthetic PRESET generated into WORK_DIR/raw/seedSEED (reused when present). Sets RAW.
recipe_corpus() {
  local seed="$1" preset="$2" sizes="$3"; shift 3
  if [ -n "$RAW_DIR" ]; then RAW="$RAW_DIR"; return; fi
  RAW="$WORK_DIR/raw/seed$seed"
  [ -f "$RAW/manifest.json" ] || "$PY" -m fairseq_metabt.synthetic --preset "$preset" --out "$RAW" --seed "$seed" \
      --sizes "$sizes" "$@"
}

# recipe_prepare RAW BIN [prepare_data.py args...]: sentencepiece + fairseq-preprocess. A finished BIN is
# reused only when it was prepared from the same corpus content (sha256 of every raw file, recorded in
# BIN/prepare.json) with the same options; one of another --raw-dir or of changed files is refused.
recipe_prepare() {
  local raw="$1" bin="$2"; shift 2
  "$PY" "$RECIPE_ROOT/scripts/prepare_data.py" "$raw" "$bin" --reuse "$@"
}

# recipe_meta_dev_split RAW SRC TGT [PREFIX]: a dev set of MetaBT's own (scripts/split_meta_dev.py). Writes
# WORK_DIR/raw_split: the corpus RAW with its SRC-TGT dev set cut by line parity into the selection dev set
# (valid: every system's early stopping, lr plateau and checkpoint choice; lines 1, 3, 5, ...) and the meta-dev
# set (metadev: MetaBT's reward, bt_mle_dev's extra bitext; lines 2, 4, 6, ...), or, with PREFIX, the meta-dev
# pairs of PREFIX.SRC/PREFIX.TGT and the dev set kept whole. Every other file is a link to RAW's. Sets RAW to
# it and META_DEV_NOTE to a one-line description of the split (recipes record it with the corpus).
recipe_meta_dev_split() {
  local raw="$1" s="$2" t="$3" prefix="${4:-}" out="$WORK_DIR/raw_split"
  META_DEV_NOTE="$("$PY" "$RECIPE_ROOT/scripts/split_meta_dev.py" "$raw" "$out" --src "$s" --tgt "$t" \
                   ${prefix:+--meta-dev "$prefix"})" || exit $?
  RAW="$out"
  echo "meta-dev split: $META_DEV_NOTE"
}

# ev_train SAVE_DIR fairseq-train args...: train to dev convergence under the shared protocol.
ev_train() {
  local save="$1"; shift
  echo; echo "=== train $(basename "$save") (fairseq-train, early stopping: patience $PATIENCE x $VALIDATE_EVERY updates) ==="
  "$PY" -m fairseq_metabt.evidence train --save-dir "$save" --patience "$PATIENCE" \
    --validate-every "$VALIDATE_EVERY" --max-update "$MAX_UPDATE" --metric "${METRIC:-loss}" -- "$@"
}

# ev_eval SYSTEM SEED SAVE_DIR BIN SRC TGT [evaluate args...]: score checkpoint_best.pt of SAVE_DIR.
ev_eval() {
  local system="$1" seed="$2" save="$3" bin="$4" s="$5" t="$6"; shift 6
  echo; echo "=== evaluate $system, seed $seed, $s-$t (fairseq-generate + sacrebleu) ==="
  "$PY" -m fairseq_metabt.evidence evaluate "$bin" --work-dir "$WORK_DIR" --system "$system" --seed "$seed" \
    --save-dir "$save" --path "$save/checkpoint_best.pt" -s "$s" -t "$t" "$@"
}

# ev_compare compare-args...: WORK_DIR/results/summary.json and its table. The recipe's command line as
# launched, the effective value of every knob it read and, with --raw-dir, the corpus (path, content hash,
# manifest) are recorded as its provenance.
ev_compare() {
  local k knobs=()
  for k in $RECIPE_KNOBS; do [ -z "${!k:-}" ] || knobs+=(--knob "$k=${!k}"); done
  echo; echo "=== results (paired by seed: $SEEDS) ==="
  "$PY" -m fairseq_metabt.evidence compare --work-dir "$WORK_DIR" --out "$WORK_DIR/results/summary.json" \
    --command "$RECIPE_COMMAND" ${RAW_DIR:+--raw-dir "$RAW_DIR"} "${knobs[@]+"${knobs[@]}"}" "$@"
}

# recipe_cpu_flag: --cpu unless CUDA is available (the recipes run unchanged on GPUs).
recipe_cpu_flag() {
  if "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then echo ""; else echo "--cpu"; fi
}

# Parallel lanes. Small models on CPU do not speed up with more threads per run, so a recipe runs
# JOBS independent trainings at once (default: the number of cores), one thread each; dependencies
# are explicit barriers (ev_pool_wait). Each job's output goes to WORK_DIR/logs/NAME.log and its
# last lines are printed when it ends (appended to, so a re-run keeps the earlier log); a failed job fails
# the recipe at the next barrier.
# (nproc honours OMP_NUM_THREADS, which this file sets to 1: count the cores without it)
RECIPE_JOBS="${JOBS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)}"
[[ "$RECIPE_JOBS" =~ ^[1-9][0-9]*$ ]] || recipe_die "JOBS must be a positive integer, got '$RECIPE_JOBS'"
EV_NAMES=()

# ev_progress_start: with the first job, a monitor that prints a line per running system at each of its
# dev validations and an overall line (python -m fairseq_metabt.evidence progress); stopped when the recipe
# exits. PROGRESS_POLL (seconds, default 10) sets how often it looks at the logs.
# It is started outside the recipe's job table (a subshell that exits at once), so that the lanes
# (`jobs`) and the barriers (`wait`) see only the trainings.
ev_progress_start() {
  [ -z "${EV_PROGRESS_PID:-}" ] || return 0
  mkdir -p "$WORK_DIR/logs"
  local pidfile="$WORK_DIR/logs/.progress.pid"
  ( "$PY" -m fairseq_metabt.evidence progress --work-dir "$WORK_DIR" --patience "$PATIENCE" \
      --validate-every "$VALIDATE_EVERY" --metric "${METRIC:-loss}" --poll "${PROGRESS_POLL:-10}" \
      --parent-pid $$ & echo $! > "$pidfile" )
  EV_PROGRESS_PID="$(cat "$pidfile")"
  trap 'kill "$EV_PROGRESS_PID" 2>/dev/null || true' EXIT
}

# ev_pool_run NAME command...: run a command (a shell function or program) as a background job.
ev_pool_run() {
  local name="$1"; shift
  ev_progress_start
  while [ "$(jobs -rp | wc -l)" -ge "$RECIPE_JOBS" ]; do sleep 1; done
  mkdir -p "$WORK_DIR/logs"
  local log="$WORK_DIR/logs/$name.log" rcfile="$WORK_DIR/logs/$name.rc"
  rm -f "$rcfile"
  echo "$$" > "$WORK_DIR/logs/$name.started"  # tells the monitor this run started it (logs outlive a stopped run)
  echo "--- start $name (log: $log)"
  ( set +e; "$@" >>"$log" 2>&1; rc=$?  # appended: a re-run (systems reused) keeps the earlier output
    if [ $rc -eq 0 ]; then echo "--- done $name: $(grep -F '[evidence]' "$log" | tail -n 2 | tr '\n' ' ')"
    else echo "--- FAILED $name (exit $rc); last lines of $log:"; tail -n 15 "$log"; fi
    echo "$rc" > "$rcfile"; exit $rc ) &
  EV_NAMES+=("$name")
}

# ev_pool_wait: wait for every job started since the last barrier; die if one failed. Each job's exit
# status is read from the file it wrote, not from `wait PID`: bash forgets the status of a finished
# job whose pid the system has reused meanwhile ("pid N is not a child of this shell").
ev_pool_wait() {
  local i rc failed=()
  wait
  for i in "${!EV_NAMES[@]}"; do
    rc="$(cat "$WORK_DIR/logs/${EV_NAMES[$i]}.rc" 2>/dev/null || echo missing)"
    [ "$rc" = 0 ] || failed+=("${EV_NAMES[$i]}")
  done
  EV_NAMES=()
  [ ${#failed[@]} -eq 0 ] || recipe_die "failed: ${failed[*]} (their logs are in $WORK_DIR/logs/)"
}

# ---- Paper-scale recipes (examples/*/run_paper.sh; docs/reproduce.md) --------------------------------------
# A paper recipe sources this file, calls paper_parse "$@" (the shared and the paper-scale flags; its own options
# with recipe_options), converts the public corpus with paper_corpus / paper_convert and binarises it with
# paper_prepare, trains and scores every system with ev_train / ev_eval / ev_compare like the miniatures, and ends
# with paper_report (the paper's figures beside ours).
PAPER_SHARED_HELP='Paper-scale flags (every run_paper.sh; docs/reproduce.md):
  --gpus N             GPUs per training: fairseq-train --distributed-world-size N (default: every visible GPU)
  --update-freq F      gradient accumulation (default: what keeps the paper'"'"'s batch with --gpus N)
  --no-amp             train in fp32 (default on GPUs: --amp, fairseq'"'"'s mixed precision)
  --dry-run            two updates of every system on the CPU with a tiny model, then scoring and the table: checks
                       the data and the flags end to end (what CI runs); it measures nothing'

# paper_parse "$@": the recipe's command line: PAPER_SHARED_HELP appended to its RECIPE_USAGE, the shared flags
# (recipe_parse), then the paper-scale flags taken out of RECIPE_ARGS (the recipe's own options stay there). Sets
# PAPER_GPUS, PAPER_AMP, PAPER_DRY_RUN and UPDATE_FREQ (empty: paper_update_freq decides). A dry run keeps the
# first seed, accumulates no gradients (--update-freq 1) and stops every system after two updates (validation
# every update, patience 1: the shortest early stop the protocol accepts).
paper_parse() {
  local rest=()
  RECIPE_USAGE+=$'\n\n'"$PAPER_SHARED_HELP"
  recipe_parse "$@"
  PAPER_GPUS=""; PAPER_AMP=1; PAPER_DRY_RUN=0; UPDATE_FREQ=""
  set -- "${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --gpus|--update-freq)
        [ $# -ge 2 ] || recipe_die "$1 needs a value (see --help)"
        [[ "$2" =~ ^[1-9][0-9]*$ ]] || recipe_die "$1 takes a positive integer, got '$2'"
        if [ "$1" = --gpus ]; then PAPER_GPUS="$2"; else UPDATE_FREQ="$2"; fi
        shift 2 ;;
      --no-amp) PAPER_AMP=0; shift ;;
      --dry-run) PAPER_DRY_RUN=1; shift ;;
      *) rest+=("$1"); shift ;;
    esac
  done
  RECIPE_ARGS=("${rest[@]+"${rest[@]}"}")
  if [ "$PAPER_DRY_RUN" = 1 ]; then
    MAX_UPDATE=2; PATIENCE=1; VALIDATE_EVERY=1; PAPER_GPUS=0; UPDATE_FREQ=1; SEEDS="${SEEDS%% *}"
  elif [ -z "$PAPER_GPUS" ]; then
    PAPER_GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
  fi
  # every training uses all --gpus: one at a time unless JOBS says otherwise (lanes are for CPU runs)
  if [ "$PAPER_GPUS" -gt 0 ] && [ -z "${JOBS:-}" ]; then RECIPE_JOBS=1; fi
}

# paper_warmup N: the paper's warm-up, or 1 update in a dry run (a stage must be able to end after it)
paper_warmup() { if [ "$PAPER_DRY_RUN" = 1 ]; then echo 1; else echo "$1"; fi; }

# paper_update_freq TOKENS MAX_TOKENS: --update-freq F such that F x MAX_TOKENS x GPUs reaches the paper's
# TOKENS per update (at least 1); --update-freq given on the command line wins
paper_update_freq() {
  if [ -n "$UPDATE_FREQ" ]; then echo "$UPDATE_FREQ"; return; fi
  local per=$(( $2 * (PAPER_GPUS > 0 ? PAPER_GPUS : 1) ))
  echo $(( ($1 + per - 1) / per ))
}

# paper_device_flags TOKENS MAX_TOKENS: the fairseq-train flags of the device: on GPUs fairseq's own launcher
# (--distributed-world-size, with --amp unless --no-amp) and the --update-freq of paper_update_freq; --cpu
# otherwise (a dry run, or no GPU visible)
paper_device_flags() {
  if [ "$PAPER_GPUS" -gt 0 ]; then
    echo --distributed-world-size "$PAPER_GPUS" --update-freq "$(paper_update_freq "$1" "$2")"
    [ "$PAPER_AMP" = 0 ] || echo --amp
  else
    # batches of any size: fairseq's batching drops the remainder below a multiple of 8 (the whole dev set of a
    # dry run's fixture), which only GPUs' tensor cores gain from
    echo --cpu --update-freq "$(paper_update_freq "$1" "$2")" --required-batch-size-multiple 1
  fi
}

# paper_convert prepare_public.py args...: the public corpus in the raw layout, in WORK_DIR/raw (reused when it
# already holds this conversion; --append adds a second dataset's files). Sets RAW.
paper_convert() {
  RAW="$WORK_DIR/raw"
  "$PY" "$RECIPE_ROOT/scripts/prepare_public.py" --out "$RAW" --reuse "$@" | tail -n 1
}

# paper_preset_langs PRESET: the languages of a TED preset of scripts/prepare_public.py, space-separated
paper_preset_langs() {
  "$PY" -c 'import sys; from fairseq_metabt.data.public_corpora import PRESETS as P
sys.exit(print(" ".join(P[sys.argv[1]])) if sys.argv[1] in P else "fairseq-metabt: error: unknown --preset "
         + sys.argv[1] + " (choose one of " + ", ".join(P) + ")")' "$1" || exit 2
}

# paper_report PAPER SETTING [PAIR]: the paper's reported BLEU beside ours (mean over seeds), from the summary
paper_report() {
  echo; echo "=== the paper's figures and ours ==="
  "$PY" -m fairseq_metabt.data.paper_figures "$WORK_DIR/results/summary.json" --paper "$1" --setting "$2" \
    ${3:+--pair "$3"}
}

# paper_needs_conversion DIR WHAT: false when --raw-dir was given (RAW is set to it); true when the recipe is to
# convert DIR, the downloaded corpus (an empty DIR is refused: "give WHAT or --raw-dir (a converted corpus)").
paper_needs_conversion() {
  if [ -n "$RAW_DIR" ]; then RAW="$RAW_DIR"; return 1; fi
  [ -n "$1" ] || recipe_die "give $2 or --raw-dir (a converted corpus)"
}

# paper_corpus DIR WHAT prepare_public.py args...: the recipe's corpus: --raw-dir when given, else DIR converted
# by paper_convert with these args (paper_needs_conversion refuses an empty DIR). Sets RAW.
paper_corpus() {
  local dir="$1" what="$2"; shift 2
  if paper_needs_conversion "$dir" "$what"; then paper_convert "$@"; fi
}

# paper_ted_corpus TED_DIR PRESET: the TED recipes' corpus: --raw-dir when given, else the TED tables of TED_DIR
# converted for PRESET with TGT as the pivot (paper_convert). Sets RAW.
paper_ted_corpus() {
  paper_corpus "$1" "--ted-dir DIR (the TED tables all_talks_*.tsv)" --dataset ted --ted-dir "$1" --preset "$2" \
    --pivot "$TGT"
}

# paper_prepare: the converted corpus RAW binarised into WORK_DIR/bin (recipe_prepare, a sentencepiece vocabulary
# of 32,000 pieces). Sets BIN.
paper_prepare() {
  BIN="$WORK_DIR/bin"
  recipe_prepare "$RAW" "$BIN" --vocab-size 32000
}

# ---- Systems that two recipes share ------------------------------------------------------------------------------
# MetaBT (scripts/quickstart.sh, examples/metabt/run_paper.sh). The recipe sets SYSTEMS, BIN, COMMON (the data and
# the flags of every fairseq-train), PRETRAIN and FINETUNE (each stage's lr flags), SINGLE (the --arch flags of a
# one-direction model) and BT (meta_backtranslation's direction, task and model flags).

# Every MetaBT system a recipe can list, in table order; METABT_BT: those that need the backward model
METABT_SYSTEMS="baseline baseline_ft bt bt_mle bt_mle_dev metabt metabt_dev metabt_sent"
METABT_BT="backward bt bt_mle bt_mle_dev metabt metabt_dev metabt_sent"

# metabt_mode: BT_FORWARD says where the forward model of every BT/MetaBT system starts, and so which system is
# the control of the table (METABT_CONTROL):
#   scratch  (default) random initialisation, on the pre-training schedule, beside the converged backward model:
#            the paper's set-up (A.2); the control is `baseline`, trained on the bitext alone with that schedule.
#   finetune the converged baseline, on the fine-tuning schedule (FT_LR); the control is `baseline_ft`, the
#            baseline fine-tuned as long. The tables kept before 2026-12-06 used it; on the real catalog kit it
#            held BT's gain to +0.1 BLEU where BT from scratch gained +2 (docs/catalog_corpus.md).
metabt_mode() {
  BT_FORWARD="${BT_FORWARD:-scratch}"
  case "$BT_FORWARD" in
    scratch) METABT_CONTROL=baseline ;;
    finetune) METABT_CONTROL=baseline_ft ;;
    *) recipe_die "BT_FORWARD=$BT_FORWARD: use scratch (each BT system's forward model from random initialisation," \
                  "the default) or finetune (from the converged baseline, the control baseline_ft)" ;;
  esac
}

# metabt_default_systems SYSTEM...: a recipe's default --systems (set after metabt_mode): the list given, with the
# control baseline_ft after baseline when BT_FORWARD=finetune
metabt_default_systems() {
  local s out=()
  for s in "$@"; do
    out+=("$s")
    if [ "$s" = baseline ] && [ "$METABT_CONTROL" = baseline_ft ]; then out+=(baseline_ft); fi
  done
  SYSTEMS="${out[*]}"
}

# metabt_require_control: refuse, before anything trains, a --systems list without the table's control
metabt_require_control() {
  recipe_has_system "$METABT_CONTROL" || recipe_die "--systems \"$SYSTEMS\" lacks the control $METABT_CONTROL" \
    "(every Δ is against it with BT_FORWARD=$BT_FORWARD): add it, e.g. --systems \"$METABT_CONTROL $SYSTEMS\""
}

# metabt_train_eval SYSTEM SEED SAVE_DIR fairseq-train args...: one job: train one system to dev convergence, then
# score its best checkpoint at once (SRC->TGT; the backward model is not scored)
metabt_train_eval() {
  local sys="$1" seed="$2" save="$3"; shift 3
  ev_train "$save" "$@" || return $?
  if [ "$sys" != backward ]; then ev_eval "$sys" "$seed" "$save" "$BIN" "$SRC" "$TGT" || return $?; fi
}

# metabt_bt_systems: the listed systems that need the backward model (backward itself, every BT/MetaBT system)
metabt_bt_systems() {
  local s
  for s in $METABT_BT; do
    if recipe_has_system "$s"; then echo "$s"; fi
  done
}

# metabt_pretrain: stage 1, pre-training: the baseline and, when a listed system back-translates (or `backward` is
# listed), the backward model TGT->SRC, to dev convergence (JOBS of them at a time)
metabt_pretrain() {
  local seed run
  for seed in $SEEDS; do
    run="$WORK_DIR/seed$seed"
    ev_pool_run "seed$seed.baseline" metabt_train_eval baseline "$seed" "$run/baseline" "${COMMON[@]}" \
      "${PRETRAIN[@]}" --seed "$seed" --task translation -s "$SRC" -t "$TGT" "${SINGLE[@]}"
    if [ -n "$(metabt_bt_systems)" ]; then
      ev_pool_run "seed$seed.backward" metabt_train_eval backward "$seed" "$run/backward" "${COMMON[@]}" \
        "${PRETRAIN[@]}" --seed "$seed" --task translation -s "$TGT" -t "$SRC" "${SINGLE[@]}"
    fi
  done
  ev_pool_wait
}

# metabt_stage2: stage 2, after the stage-1 models converged: every BT/MetaBT system (its forward model from
# scratch or from the baseline, BT_FORWARD) and baseline_ft, one schedule and stopping rule for the control and every
# method (the slowest systems start first, so the lanes finish together)
metabt_stage2() {
  local sys seed run init sched args
  for sys in metabt_sent metabt_dev metabt bt_mle_dev bt_mle bt baseline_ft; do
    recipe_has_system "$sys" || continue
    for seed in $SEEDS; do
      run="$WORK_DIR/seed$seed"
      if [ "$BT_FORWARD" = scratch ]; then
        init=(--backward-init "$run/backward/checkpoint_best.pt"); sched=("${PRETRAIN[@]}")
      else
        init=(--forward-init "$run/baseline/checkpoint_best.pt" --backward-init "$run/backward/checkpoint_best.pt")
        sched=("${FINETUNE[@]}")
      fi
      case "$sys" in
        baseline_ft) sched=("${FINETUNE[@]}")
                     args=(--task translation -s "$SRC" -t "$TGT" "${SINGLE[@]}"
                           --finetune-from-model "$run/baseline/checkpoint_best.pt") ;;
        bt) args=("${BT[@]}" "${init[@]}" --freeze-backward) ;;
        bt_mle) args=("${BT[@]}" "${init[@]}" --meta-weight 0) ;;
        bt_mle_dev) args=("${BT[@]}" "${init[@]}" --meta-weight 0 --extra-bitext-subsets metadev) ;;
        metabt) args=("${BT[@]}" "${init[@]}" --meta-dev-subset metadev) ;;
        # MetaBT that also trains both models on the meta-dev pairs: the same labelled data, used the same way,
        # as bt_mle_dev, so metabt_dev vs bt_mle_dev is the meta reward alone
        metabt_dev) args=("${BT[@]}" "${init[@]}" --meta-dev-subset metadev --extra-bitext-subsets metadev) ;;
        # MetaBT with one reward per pseudo-sentence (first-order Taylor trick) instead of one per batch:
        # the same data as metabt, so metabt_sent vs metabt is the reward's granularity alone
        metabt_sent) args=("${BT[@]}" "${init[@]}" --meta-dev-subset metadev --meta-reward-granularity sentence) ;;
      esac
      ev_pool_run "seed$seed.$sys" metabt_train_eval "$sys" "$seed" "$run/$sys" "${COMMON[@]}" "${sched[@]}" \
        --seed "$seed" "${args[@]}"
    done
  done
  ev_pool_wait
}

# metabt_compare "CONTROLS" TITLE CORPUS: the table of the listed systems, Δ and p against METABT_CONTROL
# (metabt_mode), metabt against each of CONTROLS (space-separated) that ran, metabt_dev against bt_mle_dev and
# metabt, and metabt_sent against metabt and bt_mle
metabt_compare() {
  local rows=() pairs=() s same=() pre=()
  for s in $METABT_SYSTEMS; do
    if recipe_has_system "$s"; then rows+=("$s"); fi
  done
  for s in $1; do pairs+=(metabt:"$s"); done
  recipe_also "${pairs[@]}" metabt_dev:bt_mle_dev metabt_dev:metabt metabt_sent:metabt metabt_sent:bt_mle
  if [ "$BT_FORWARD" = scratch ]; then
    # the control and every BT system train from scratch on the pre-training schedule (baseline_ft, when listed,
    # is a row of its own on the fine-tuning schedule)
    same=(baseline ${METABT_BT#backward })
  else
    # every system but the un-fine-tuned baseline runs the fine-tuning schedule; continuing the baseline must gain
    # nothing (it had converged), or the fine-tuned systems' Δ would mix in that gain
    same=(${METABT_SYSTEMS#baseline }); pre=(--precondition baseline_ft:baseline)
  fi
  ev_compare --control "$METABT_CONTROL" --systems "${rows[@]}" "${pre[@]+"${pre[@]}"}" \
    --same-schedule "${same[@]}" "${ALSO[@]+"${ALSO[@]}"}" \
    --title "$2" --corpus "$3"
}

# Differentiable reconstruction (examples/reconstruction/run_miniature.sh, run_paper.sh). The recipe sets SYSTEMS,
# BIN, COMMON (the data and the flags of every fairseq-train), ARCH and TAU (STGS's temperature).

# reconstruction_system SYSTEM SEED: pre-train, or fine-tune from the pre-trained model; then score both directions
reconstruction_system() {
  local sys="$1" seed="$2" run="$WORK_DIR/seed$2" ft
  case "$sys" in
    pretrain) ev_train "$run/pretrain" "${COMMON[@]}" --arch "$ARCH" --criterion label_smoothed_cross_entropy \
                --lr 1e-3 --seed "$seed" || return $? ;;
    *) case "$sys" in
         baseline) ft=(--arch "$ARCH" --criterion label_smoothed_cross_entropy) ;;
         hidden) ft=(--arch "${ARCH/transformer_lowres/transformer_hidden_reconstruction}" --criterion hidden_reconstruction) ;;
         stgs-beta*) ft=(--arch "$ARCH" --criterion stgs_reconstruction --stgs-beta "${sys#stgs-beta}" --stgs-tau "$TAU") ;;
       esac
       ev_train "$run/$sys" "${COMMON[@]}" "${ft[@]}" --lr 1e-4 --seed "$seed" \
         --finetune-from-model "$run/pretrain/checkpoint_best.pt" || return $? ;;
  esac
  ev_eval "$sys" "$seed" "$run/$sys" "$BIN" "$SRC" "$TGT" --task bidirectional_translation || return $?
  ev_eval "$sys" "$seed" "$run/$sys" "$BIN" "$TGT" "$SRC" --task bidirectional_translation || return $?
}

# reconstruction_run TITLE CORPUS: the pre-training of every seed, then every fine-tune (JOBS at a time), and the
# table: Δ and p against baseline (L_T fine-tuning), the pre-trained model scored as `pretrain`
reconstruction_run() {
  local sys seed
  for seed in $SEEDS; do ev_pool_run "seed$seed.pretrain" reconstruction_system pretrain "$seed"; done
  ev_pool_wait
  for sys in $SYSTEMS; do for seed in $SEEDS; do ev_pool_run "seed$seed.$sys" reconstruction_system "$sys" "$seed"; done; done
  ev_pool_wait
  # shellcheck disable=SC2086
  ev_compare --control baseline --systems pretrain $SYSTEMS --precondition baseline:pretrain --same-schedule $SYSTEMS \
    --title "$1" --corpus "$2"
}

# Wake-sleep (examples/wake_sleep/run_miniature.sh, run_paper.sh).
# wake_sleep_compare TITLE CORPUS: the table of iterations 0..ITERATIONS and their controls: iterI vs controlI for
# every I; iterI vs iter(I-1): does the sleep phase help beyond back-translation (the paper's claim, iteration >= 2
# over iteration 1)? controlI vs control(I-1) checks that the continued-training chain itself has stopped gaining,
# so iterI's gain over iter(I-1) is the pseudo data's.
wake_sleep_compare() {
  local systems=(iter0) also=() same=() pre=(control1:iter0) i
  for ((i = 1; i <= ITERATIONS; i++)); do
    systems+=("iter$i" "control$i"); also+=("iter$i:control$i"); same+=("iter$i" "control$i")
    if [ "$i" -ge 2 ]; then also+=("iter$i:iter$((i - 1))"); pre+=("control$i:control$((i - 1))"); fi
  done
  ev_compare --control "control$ITERATIONS" --systems "${systems[@]}" --also "${also[@]}" --precondition "${pre[@]}" \
    --same-schedule "${same[@]}" --title "$1" --corpus "$2"
}
