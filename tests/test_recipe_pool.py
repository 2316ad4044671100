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
