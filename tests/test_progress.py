"""Recipe progress (fairseq_metabt/evidence/progress.py): lines read from job logs in fairseq's own format."""
import io
import os

import pytest

from fairseq_metabt.evidence import progress

pytestmark = pytest.mark.fast


def _valid(stamp, update, loss, best=None):
    tail = f" | best_loss {best}" if best is not None else ""
    return (f"2026-12-05 {stamp} | INFO | valid | epoch 001 | valid on 'valid' subset | loss {loss} | nll_loss "
            f"{loss} | ppl 9.9 | wps 100 | wpb 300 | bsz 20 | num_updates {update}{tail}\n")


def test_job_state_reads_update_best_patience_left_and_rate():
    log = ("=== train backward (fairseq-train, early stopping: patience 3 x 50 updates) ===\n"
           + _valid("10:00:00", 50, 5.0) + "[evidence] /w/backward: converged (early stop); best loss 5.0\n"
           "=== train metabt (fairseq-train, early stopping: patience 3 x 50 updates) ===\n"
           + _valid("10:01:00", 50, 4.0) + _valid("10:02:00", 100, 3.5, 3.5) + _valid("10:03:40", 150, 3.6, 3.5)
           + _valid("10:05:20", 200, 3.7, 3.5))
    st = progress.job_state(log, patience=3, validate_every=50)
    assert (st["stage"], st["update"], st["value"], st["best"], st["best_update"]) == ("metabt", 200, 3.7, 3.5, 100)
    assert st["left"] == 1 and not st["finished"]  # two validations without a new best, patience 3
    assert st["s_per_update"] == pytest.approx((5 * 60 + 20 - 60) / 150)  # the last three intervals
    line = progress.format_job("seed1.metabt", st)
    assert line == ("[progress] seed1.metabt (metabt): update 200, dev loss 3.700, best 3.500 at 100, early stop "
                    "after 1 more validations without a new best, 1.73 s/update")
    assert progress.job_state("=== train x (..) ===\n", 3, 50) is None  # no validation yet


def test_a_resumed_run_counts_its_validations_before_the_resume(tmp_path):
    # the job log of a resumed run holds only its last start; fairseq's best (3.255 at 4600) came before it
    save = tmp_path / "seed1" / "static_k"
    save.mkdir(parents=True)
    before = (_valid("10:00:00", 4550, 3.258) + _valid("10:01:00", 4600, 3.255)
              + _valid("10:02:00", 4650, 3.254))  # validated by the killed start, never saved: replayed
    job = ("=== train static_k (fairseq-train, early stopping: patience 5 x 50 updates) ===\n"
           f"2026-12-05 11:00:00 | INFO | fairseq.trainer | Loaded checkpoint {save}/checkpoint_last.pt "
           "(epoch 13 @ 4600 updates)\n"
           + _valid("11:01:00", 4650, 3.258) + _valid("11:02:00", 4700, 3.257) + _valid("11:03:00", 4750, 3.255))
    (save / "train.log").write_text("# fairseq-train ...\n" + before + "# fairseq-train ...\n" + job)
    st = progress.job_state(job, patience=5, validate_every=50)
    assert (st["update"], st["best"], st["best_update"], st["left"]) == (4750, 3.255, 4600, 2)
    # without the save dir's log the job log is all there is
    (save / "train.log").unlink()
    st = progress.job_state(job, patience=5, validate_every=50)
    assert (st["best"], st["best_update"], st["left"]) == (3.255, 4750, 5)


def test_monitor_prints_each_new_validation_once_and_an_overall_line(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    head = "=== train baseline (fairseq-train, early stopping: patience 2 x 10 updates) ===\n"
    (logs / "seed1.baseline.log").write_text(head + _valid("10:00:00", 10, 6.0) + _valid("10:00:20", 20, 5.0, 5.0))
    (logs / "seed1.backward.log").write_text(head.replace("baseline", "backward"))
    out = io.StringIO()
    progress.monitor(str(tmp_path), 2, 10, poll=0, out=out, max_polls=1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[progress] seed1.baseline (baseline): update 20, dev loss 5.000, best 5.000 at 20")
    assert lines[0].endswith(", 2.00 s/update")
    assert lines[1].startswith("[progress] ") and "0 jobs done, 2 running" in lines[1]
    assert "stop within ~40 s" in lines[1]  # 2 validations left x 10 updates x 2 s
    # nothing new: nothing printed; a new validation: one more line; a finished job counts as done
    out2 = io.StringIO()
    progress.monitor(str(tmp_path), 2, 10, poll=0, out=out2, max_polls=1)
    assert out2.getvalue().count("seed1.baseline") == 1  # a fresh monitor reports the current state once
    with open(logs / "seed1.baseline.log", "a") as f:
        f.write(_valid("10:00:40", 30, 4.0, 4.0) + "[evidence] x: converged (early stop)\n")
    (logs / "seed1.baseline.rc").write_text("0\n")
    (logs / "seed1.backward.log").write_text(head.replace("baseline", "backward") + _valid("10:00:05", 10, 7.0))
    jobs = progress.scan(str(tmp_path), 2, 10)
    assert jobs["seed1.baseline"]["status"] == "done" and jobs["seed1.backward"]["status"] == "running"
    assert "1 jobs done, 1 running" in progress.overall(jobs, 125, 10)
    # one validation of backward's stage so far: no rate, so no time is promised for it
    assert "stop within" not in progress.overall(jobs, 125, 10)
    assert "1 running job(s) not yet timed" in progress.overall(jobs, 125, 10)
    assert progress.overall(jobs, 125, 10).startswith("[progress] 2 min elapsed")
    (logs / "seed1.backward.rc").write_text("1\n")
    assert "1 FAILED" in progress.overall(progress.scan(str(tmp_path), 2, 10), 5, 10)
    assert os.path.exists(logs / "seed1.backward.rc")


def test_a_job_left_by_an_earlier_stopped_run_is_not_counted_as_running(tmp_path):
    # a stopped recipe leaves job logs without an exit status; the re-run resumes them one lane at a time
    logs = tmp_path / "logs"
    logs.mkdir()
    head = "=== train {} (fairseq-train, early stopping: patience 2 x 10 updates) ===\n"
    (logs / "seed1.metabt.log").write_text(head.format("metabt") + _valid("10:00:00", 10, 6.0)
                                           + _valid("10:00:20", 20, 5.0, 5.0))
    (logs / "seed1.metabt.started").write_text("4242\n")  # started by this run (pid 4242)
    (logs / "seed1.bt.log").write_text(head.format("bt") + _valid("09:00:00", 10, 7.0)
                                       + _valid("09:10:00", 20, 6.9, 6.9))
    (logs / "seed1.bt.started").write_text("1111\n")  # started by the stopped run
    jobs = progress.scan(str(tmp_path), 2, 10, run_id=4242)
    assert jobs["seed1.metabt"]["status"] == "running" and jobs["seed1.bt"]["status"] == "interrupted"
    line = progress.overall(jobs, 60, 10)
    assert "0 jobs done, 1 running, 1 interrupted in an earlier run" in line
    assert "stop within ~40 s" in line  # bt's 60 s/update of the stopped run does not count
    # without a run id (an older recipe) every log without an exit status counts as running
    assert progress.scan(str(tmp_path), 2, 10)["seed1.bt"]["status"] == "running"
    # the monitor of run 4242 prints only its own job
    out = io.StringIO()
    progress.monitor(str(tmp_path), 2, 10, poll=0, out=out, max_polls=1, parent_pid=4242)
    assert "seed1.metabt (metabt)" in out.getvalue() and "seed1.bt (bt)" not in out.getvalue()
