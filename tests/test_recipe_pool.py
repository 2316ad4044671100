"""scripts/recipe_lib.sh runs independent trainings in parallel lanes: at most JOBS at once, every job's
log kept, and a failed job fails the recipe at the next barrier, naming the job."""
import os
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _bash(script: str, work: str, jobs: str = "2") -> subprocess.CompletedProcess:
    env = dict(os.environ, JOBS=jobs, WORK_DIR=work)
    prog = f'set -euo pipefail\nsource "{ROOT}/scripts/recipe_lib.sh"\nWORK_DIR="{work}"\n{script}'
    return subprocess.run(["bash", "-c", prog], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, timeout=120)


def test_jobs_run_side_by_side_up_to_jobs(tmp_path):
    """Each job records the number of jobs alive when it starts: never above JOBS, and 2 lanes are used."""
    script = r'''
job() { mkdir -p "$WORK_DIR/alive"; touch "$WORK_DIR/alive/$1"; ls "$WORK_DIR/alive" | wc -l > "$WORK_DIR/n.$1";
        sleep 1; rm "$WORK_DIR/alive/$1"; echo "[evidence] job $1 ok"; }
for i in 1 2 3 4 5; do ev_pool_run "j$i" job "$i"; done
ev_pool_wait
echo barrier passed
'''
    proc = _bash(script, str(tmp_path))
    assert proc.returncode == 0, proc.stdout
    assert "barrier passed" in proc.stdout
    alive = [int((tmp_path / f"n.{i}").read_text()) for i in range(1, 6)]
    assert max(alive) == 2, alive
    for i in range(1, 6):  # every job's output is kept in its log, and its summary line printed
        assert (tmp_path / "logs" / f"j{i}.log").read_text().strip() == f"[evidence] job {i} ok"
        assert f"--- done j{i}: [evidence] job {i} ok" in proc.stdout


def test_a_failed_job_fails_the_barrier_and_is_named(tmp_path):
    script = r'''
ok() { echo fine; }
bad() { echo "fairseq-train: something broke"; return 3; }
ev_pool_run first ok
ev_pool_run second bad
ev_pool_run third ok
ev_pool_wait
echo not reached
'''
    proc = _bash(script, str(tmp_path))
    assert proc.returncode == 2, proc.stdout
    assert "not reached" not in proc.stdout
    assert "--- FAILED second (exit 3)" in proc.stdout
    assert "fairseq-train: something broke" in proc.stdout  # the failed job's last lines are shown
    assert "failed: second" in proc.stdout and "first" not in proc.stdout.split("failed:")[-1]


def test_jobs_must_be_a_positive_integer(tmp_path):
    proc = _bash("echo unreachable", str(tmp_path), jobs="two")
    assert proc.returncode == 2
    assert "JOBS must be a positive integer, got 'two'" in proc.stdout


def test_jobs_defaults_to_the_cores_not_omp_threads(tmp_path):
    """recipe_lib sets OMP_NUM_THREADS=1, which GNU nproc honours: the lane count must ignore it."""
    env = dict(os.environ, WORK_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("JOBS", None)
    proc = subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/recipe_lib.sh"; echo "lanes=$RECIPE_JOBS"'],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=60)
    cores = len(os.sched_getaffinity(0))
    assert f"lanes={cores}" in proc.stdout, proc.stdout


def test_a_failed_training_fails_its_job(tmp_path):
    """A job whose training fails must fail, not report "done" (the backward model of the quickstart did, as its
    job ended on the `if` that skips scoring it), and must not go on to score a checkpoint that does not exist."""
    script = r'''
ev_train() { echo "fairseq-metabt: error: refused"; return 2; }
ev_eval() { echo "scored $1"; }
SRC=gl; TGT=en; BIN=/nonexistent; COMMON=(); ARCH=transformer_lowres_tiny; EV_PROGRESS_PID=none
ev_pool_run seed1.backward metabt_train_eval backward 1 "$WORK_DIR/seed1/backward"
ev_pool_run seed1.baseline metabt_train_eval baseline 1 "$WORK_DIR/seed1/baseline"
ev_pool_run seed1.pretrain reconstruction_system pretrain 1
ev_pool_wait
echo not reached
'''
    proc = _bash(script, str(tmp_path))
    assert proc.returncode == 2, proc.stdout
    assert "not reached" not in proc.stdout and "--- done" not in proc.stdout, proc.stdout
    for job in ("seed1.backward", "seed1.baseline", "seed1.pretrain"):
        assert f"--- FAILED {job} (exit 2)" in proc.stdout, proc.stdout
        assert "scored" not in (tmp_path / "logs" / f"{job}.log").read_text()
    assert "failed: seed1.backward seed1.baseline seed1.pretrain" in proc.stdout


def _commands(text: str):
    """The shell commands of a script, continuation lines joined."""
    return text.replace("\\\n", " ").splitlines()


def test_every_job_stops_at_its_first_failed_step():
    """A job function runs without errexit (ev_pool_run: set +e), so every ev_train / ev_eval / evaluate call in a
    recipe must end its job on failure: `|| return $?`. Otherwise a failed training is scored (a second, misleading
    error), and a job whose last command succeeds (a skipped `if`, a `continue`) is reported done."""
    import glob
    import re
    files = [os.path.join(ROOT, "scripts", "recipe_lib.sh"), os.path.join(ROOT, "scripts", "quickstart.sh")]
    files += glob.glob(os.path.join(ROOT, "examples", "*", "run_*.sh"))
    missing = []
    for path in files:
        definition = False  # inside ev_train() / ev_eval() themselves, whose last command is the call
        with open(path, encoding="utf-8") as f:
            for line in _commands(f.read()):
                code = line.split("#", 1)[0]
                if code.startswith(("ev_train()", "ev_eval()")):
                    definition = True
                elif code.startswith("}"):
                    definition = False
                if definition:
                    continue
                if re.search(r'(^|[;(]\s*|\)\s+)(ev_train|ev_eval) "', code) or "fairseq_metabt.evidence evaluate" in code:
                    if "|| return $?" not in code and "|| exit" not in code:
                        missing.append(f"{os.path.relpath(path, ROOT)}: {code.strip()[:100]}")
    assert not missing, "\n".join(missing)
