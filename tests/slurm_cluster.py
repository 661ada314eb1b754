"""A real single-node SLURM cluster on localhost, for tests of sbatch/srun/array jobs/requeue.

``start_cluster(root)`` writes a minimal ``slurm.conf`` under ``root`` and starts three foreground
daemons with ``subprocess.Popen`` (so their PIDs are ours): ``munged`` on a private socket with a
private key, ``slurmctld -D`` and ``slurmd -D``. Every state, spool, log and pid file lives under
``root``; nothing in /etc or /run is touched except that the Debian packages ``slurm-wlm`` and
``munge`` are installed with apt when missing (only as root; otherwise ``SlurmUnavailable``).
``SlurmCluster.stop()`` terminates exactly those PIDs, never by process name, never via systemd.

There is no slurmdbd, so ``sacct`` does not work: job states come from ``scontrol show job`` and
``MinJobAge=3600`` keeps finished jobs visible there.

``tests/conftest.py`` imports the fixture, so any test may ask for it::

    def test_something(slurm_cluster, tmp_path):
        job = slurm_cluster.sbatch(["--wrap", "hostname"], cwd=tmp_path)
        assert slurm_cluster.wait(job, timeout=60) == "COMPLETED"
        subprocess.run(["srun", "-n", "1", "true"], env=slurm_cluster.env, check=True)

The fixture is session-scoped; it skips (never fails) only when SLURM cannot be made available
(not root and the binaries are missing, or apt cannot install them). A cluster that is installed
but does not come up is an error, reported with the tails of the daemon logs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRED_BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "scancel")
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")

# scontrol JobState values after which a job never runs again on its own.
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
# Job credential lifetime, in seconds. Slurm holds a requeued job for cred_expire + 1 s before it may start
# again; the default 120 s would make every requeue test take two minutes.
CRED_EXPIRE = 10
# What wait() reports for a job that scontrol no longer knows (purged after MinJobAge).
PURGED = "PURGED"

# "Key=value" tokens of `scontrol show job -o`; a value runs until the next " Key=" (values may hold '=' or ',').
_KV = re.compile(r"([A-Za-z][\w/:]*)=(.*?)(?=\s+[A-Za-z][\w/:]*=|\s*$)")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be used on this machine (binaries missing and we cannot install them)."""


def _search_path() -> str:
    parts = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(parts + [d for d in SBIN_DIRS if d not in parts])


def _missing_binaries() -> list[str]:
    path = _search_path()
    return [b for b in REQUIRED_BINARIES if shutil.which(b, path=path) is None]


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt if any binary is missing; raise SlurmUnavailable if impossible.

    Also raises SlurmUnavailable when not root: slurmd (and SlurmUser=root) need it.
    """
    missing = _missing_binaries()
    if not missing:
        if os.geteuid() != 0:
            raise SlurmUnavailable("SLURM is installed but a test cluster needs root (slurmd runs jobs as root)")
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and not root, cannot apt-get install")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]
    proc = subprocess.run(install, env=env, capture_output=True, text=True)
    if proc.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
    missing = _missing_binaries()
    if proc.returncode != 0 or missing:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SlurmUnavailable(
            f"apt-get install slurm-wlm munge failed (rc={proc.returncode}, missing={missing}):\n{tail}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    """90% of MemTotal in MB: slurmd drains a node that reports less memory than RealMemory."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(256, int(int(line.split()[1]) / 1024 * 0.9))
    return 1024


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"<{e}>"


def parse_scontrol_oneliner(line: str) -> dict[str, str]:
    """Key=value pairs of one line of `scontrol show ... -o`."""
    return {m.group(1): m.group(2) for m in _KV.finditer(line.strip())}


@dataclass
class SlurmCluster:
    """A running single-node cluster; see the module docstring."""

    root: Path
    conf: Path
    nodename: str
    env: dict[str, str]
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    # ---- plumbing -------------------------------------------------------------------------------------------
    def run(self, args: list[str], *, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a SLURM client command (`sinfo`, `scontrol`, `srun`...) against this cluster; text output."""
        kw.setdefault("capture_output", True)
        proc = subprocess.run(args, env=self.env, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(map(str, args))} failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                + self.log_tails()
            )
        return proc

    def log_tails(self, n: int = 30) -> str:
        return "\n".join(f"--- {name} ({path}) ---\n{_tail(path, n)}" for name, path in self.logs.items())

    # ---- jobs -----------------------------------------------------------------------------------------------
    def sbatch(self, args: list[str], cwd: str | os.PathLike | None = None) -> int:
        """Submit with `sbatch --parsable *args` (run in `cwd`) and return the job id."""
        out = self.run(["sbatch", "--parsable", *map(str, args)], cwd=cwd).stdout.strip()
        # --parsable prints "jobid" or "jobid;cluster"
        return int(out.splitlines()[-1].split(";")[0])

    def job_infos(self, job_id: int | str) -> list[dict[str, str]]:
        """`scontrol show job -o <id>`: one dict per record (an array job gives one per task); [] if unknown."""
        proc = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                return []
            raise RuntimeError(f"scontrol show job {job_id} failed: {proc.stderr.strip()}")
        return [parse_scontrol_oneliner(line) for line in proc.stdout.splitlines() if line.strip()]

    def job_info(self, job_id: int | str) -> dict[str, str]:
        """Key=value pairs of `scontrol show job -o <id>` (JobState, Restarts, ExitCode, ...); {} if unknown.

        For an array job id this is the first record; use job_infos() for all tasks.
        """
        infos = self.job_infos(job_id)
        return infos[0] if infos else {}

    def state(self, job_id: int | str) -> str:
        """The current JobState ("PENDING", "RUNNING", "COMPLETED", ...), or PURGED if scontrol forgot it."""
        info = self.job_info(job_id)
        return info.get("JobState", PURGED) if info else PURGED

    def wait_state(self, job_id: int | str, states, timeout: float = 60, poll: float = 0.25) -> str:
        """Poll until every record of the job is in one of `states` (or purged); return the job's state.

        For an array job: the common state if all tasks agree, else the first task state that is not COMPLETED.
        """
        states = frozenset(states)
        deadline = time.monotonic() + timeout
        while True:
            infos = self.job_infos(job_id)
            current = [i.get("JobState", "UNKNOWN") for i in infos]
            if not infos or all(s in states for s in current):
                if not infos:
                    return PURGED
                others = [s for s in current if s != "COMPLETED"]
                return others[0] if others else "COMPLETED"
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} not in {sorted(states)} after {timeout} s: states={current}\n"
                    f"{self.run(['scontrol', 'show', 'job', str(job_id)], check=False).stdout}\n{self.log_tails()}"
                )
            time.sleep(poll)

    def wait(self, job_id: int | str, timeout: float = 60) -> str:
        """Wait until the job (all array tasks) reached a terminal state; return it (e.g. "COMPLETED").

        A job that vanished from scontrol counts as finished and gives PURGED.
        """
        return self.wait_state(job_id, TERMINAL_STATES, timeout=timeout)

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def node_state(self) -> str:
        """The node's state as sinfo prints it ("idle", "mixed", "allocated", "down*", ...); "" if unreachable."""
        try:
            proc = self.run(["sinfo", "-h", "-N", "-n", self.nodename, "-o", "%T"], check=False, timeout=15)
        except subprocess.TimeoutExpired:
            return ""
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def cancel_all(self, timeout: float = 15) -> None:
        """scancel every job of this cluster and wait (up to `timeout`) until none is running or completing."""
        if self.procs.get("slurmctld") is None or self.procs["slurmctld"].poll() is not None:
            return
        try:
            jobs = self.run(["squeue", "-h", "-o", "%A"], check=False, timeout=15).stdout.split()
            if jobs:
                self.run(["scancel", *sorted(set(jobs))], check=False, timeout=15)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                active = self.run(["squeue", "-h", "-t", "R,CG,S,CF", "-o", "%A"], check=False, timeout=15)
                if active.returncode != 0 or not active.stdout.strip():
                    break
                time.sleep(0.25)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = 15) -> None:
        """Cancel all jobs, then stop the daemons we started, by PID (slurmd, slurmctld, munged). Idempotent.

        Job steps (slurmstepd and the job's processes) outlive slurmd by design: any left after the cancel
        are found through their SLURM_CONF=<our slurm.conf> environment and SIGKILLed with their descendants.
        """
        self.cancel_all()
        leftovers = _process_trees(_slurmstepd_pids(self.conf))
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for pid in leftovers + _process_trees(_slurmstepd_pids(self.conf)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _process_trees(pids: list[int]) -> list[int]:
    """`pids` and all their descendants (from /proc/*/stat), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state"
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop(0)
        if pid not in out:
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def _slurmstepd_pids(conf: Path) -> list[int]:
    """PIDs of slurmstepd processes started for the cluster with this slurm.conf (via their environment)."""
    pids = []
    needle = f"SLURM_CONF={conf}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "slurmstepd":
                continue
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _write_conf(root: Path, nodename: str, munge_socket: Path) -> Path:
    cpus = os.cpu_count() or 1
    for d in ("state", "spool", "log", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(
        f"""\
# Generated by tests/slurm_cluster.py: a throwaway single-node cluster.
ClusterName=testcluster
SlurmctldHost={nodename}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (BeginTime = requeue + cred_expire + 1 s); default 120 s
AuthInfo=socket={munge_socket},cred_expire={CRED_EXPIRE}
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# re-test pending jobs every second (defaults 60 s / 30 s): a requeued job starts as soon as its hold ends
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
MinJobAge=3600
KillWait=2
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName={nodename} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_real_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={nodename} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
    )
    return conf


def start_cluster(root: Path, timeout: float = 60) -> SlurmCluster:
    """Install if needed, configure under `root`, start munged/slurmctld/slurmd, wait for the node to be idle."""
    ensure_installed()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    nodename = socket.gethostname().split(".")[0]  # == `hostname -s`, what slurmd calls itself

    munge_dir = root / "munge"
    munge_dir.mkdir(exist_ok=True)
    os.chmod(munge_dir, 0o755)  # munged warns unless every user may reach its socket
    key = munge_dir / "munge.key"
    munge_socket = munge_dir / "munge.socket"
    if not key.exists():  # a private key: the system one is owned by the munge user, we run munged as root
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    os.chmod(key, 0o600)

    conf = _write_conf(root, nodename, munge_socket)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env.update(SLURM_CONF=str(conf), PATH=_search_path())
    # The daemons run in the foreground (-D / --foreground), so everything they log, including errors before
    # their log file is open (bad config, bind failure), goes to these captured stdout/stderr files.
    logs = {
        "munged": root / "log" / "munged.out",
        "slurmctld": root / "log" / "slurmctld.out",
        "slurmd": root / "log" / "slurmd.out",
    }
    cluster = SlurmCluster(root=root, conf=conf, nodename=nodename, env=env, logs=logs)

    def launch(name: str, args: list[str], out: Path) -> None:
        with open(out, "ab") as stream:  # the child keeps its own copy of the descriptor
            cluster.procs[name] = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
            )

    try:
        launch(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",  # as root
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
                "--num-threads=2",
            ],
            logs["munged"],
        )
        _wait_for(lambda: munge_socket.exists(), 15, "munged socket", cluster)
        launch("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)], logs["slurmctld"])
        launch("slurmd", ["slurmd", "-D", "-f", str(conf), "-N", nodename], logs["slurmd"])
        _wait_for(lambda: cluster.node_state() == "idle", timeout, f"node {nodename} idle in sinfo", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(predicate, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = [f"{n} exited rc={p.returncode}" for n, p in cluster.procs.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            reason = ", ".join(dead) if dead else f"timed out after {timeout} s"
            raise RuntimeError(
                f"SLURM test cluster did not come up: waiting for {what}: {reason}; "
                f"sinfo says {cluster.node_state()!r}\n{cluster.log_tails()}"
            )
        time.sleep(0.25)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A started single-node SlurmCluster for the whole session; skipped only if SLURM is unavailable."""
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as e:
        pytest.skip(str(e))
    try:
        yield cluster
    finally:
        cluster.stop()
