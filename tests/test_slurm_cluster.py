"""The localhost SLURM cluster fixture works: srun ranks, array jobs, requeue on a signal."""

import time

REQUEUE_SCRIPT = """\
#!/bin/bash
#SBATCH --job-name=requeue-test
#SBATCH --ntasks=1
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
echo "run restart_count=${SLURM_RESTART_COUNT:-unset} job=$SLURM_JOB_ID"
if [ "${SLURM_RESTART_COUNT:-0}" = "0" ]; then
    requeue() {
        echo "got USR1, requeueing"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    }
    trap requeue USR1
    touch first_run_started
    # sleep in the background and `wait`: bash runs the trap as soon as the signal arrives
    while true; do
        sleep 1 &
        wait $!
    done
fi
echo "second run done" > marker
"""


def test_srun_two_ranks(slurm_cluster, tmp_path):
    proc = slurm_cluster.run(
        ["srun", "-n", "2", "--cpus-per-task=1", "bash", "-c", 'echo "rank=$SLURM_PROCID of $SLURM_NTASKS"'],
        cwd=tmp_path,
    )
    assert sorted(proc.stdout.splitlines()) == ["rank=0 of 2", "rank=1 of 2"]


def test_array_job(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch(
        [
            "--array=0-3",
            "--ntasks=1",
            "--output=slurm-%A_%a.out",
            "--wrap",
            'echo "$SLURM_ARRAY_TASK_ID" > "task_$SLURM_ARRAY_TASK_ID.txt"',
        ],
        cwd=tmp_path,
    )
    assert slurm_cluster.wait(job, timeout=60) == "COMPLETED"

    tasks = slurm_cluster.job_infos(job)
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == [0, 1, 2, 3]
    assert all(t["ArrayJobId"] == str(job) for t in tasks)
    assert {(t["JobState"], t["ExitCode"]) for t in tasks} == {("COMPLETED", "0:0")}
    for i in range(4):
        assert (tmp_path / f"task_{i}.txt").read_text() == f"{i}\n"


def test_requeue_on_signal(slurm_cluster, tmp_path):
    script = tmp_path / "requeue.sh"
    script.write_text(REQUEUE_SCRIPT)
    job = slurm_cluster.sbatch([str(script)], cwd=tmp_path)

    # wait until the first run is in its loop (trap installed), then signal the batch shell only
    assert slurm_cluster.wait_state(job, {"RUNNING"}, timeout=30) == "RUNNING"
    deadline = time.monotonic() + 30
    while not (tmp_path / "first_run_started").exists():
        assert time.monotonic() < deadline, "first run never started its loop"
        time.sleep(0.2)
    assert not (tmp_path / "marker").exists()
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])

    assert slurm_cluster.wait(job, timeout=60) == "COMPLETED", (tmp_path / f"slurm-{job}.out").read_text()
    info = slurm_cluster.job_info(job)
    assert info["Restarts"] == "1"
    assert info["ExitCode"] == "0:0"
    assert (tmp_path / "marker").read_text() == "second run done\n"
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert "run restart_count=1" in log
