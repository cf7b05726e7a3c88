"""Fault injection on the debug pipeline: SIGKILLs with restarts, a restarted mlflow server, a full
disk and a diverging loss; then checks that nothing read is corrupt, doubled or gone backwards.

    .venv/bin/python bench/faults.py [--kills 50] [--seed 0] [--max-delay 30]
        [--scenarios kills,server,disk,nan] [--keep]

kills: `launch.py --configs defaults minatar debug` in a temporary folder (local mlflow store, never
ending by itself) is SIGKILLed `--kills` times, each time at a random moment of its run, in a random
target: the generator, the learner, or the launcher's whole process group; each restart is
`--resume_id <run>`. A last restart trains 10 more steps and must finish with exit code 0.
server: the same job against a real `mlflow server` on loopback, killed while the job runs and
started again on the same port and store: the job must finish with every step and file.
disk: the artifact root is a 2 MB tmpfs (needs root and mount): the job must stop with exit 2 and
one sentence, leaving only whole files; so must a resume on the still-full disk.
nan: `--adam_lr 1e30` makes the loss non-finite: the learner skips those updates, logs
train/nonfinite_skipped, and stops with exit 2 and one sentence after max_nonfinite_steps.

Checks (`check_run`, also used by tests/test_faults.py): every episode file listed reads and holds
the rows its name says; the run's listing shows no temporary name; no episode index starts twice in
a worker's files; checkpoint steps never go backwards and every restart's learner resumes at the
step of the checkpoint the run held.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAUNCH = [sys.executable, str(ROOT / 'launch.py'), '--configs', 'defaults', 'minatar', 'debug']
# a job that ends only when killed: learner and generator both far from their step limits
ENDLESS = ['--n_steps', '1000000', '--n_env_steps', '100000000', '--save_interval', '5']
TARGETS = ('generator', 'learner', 'launcher group')
_VISIBLE = re.compile(r'config\.yaml|checkpoints/(latest|previous)\.pt|dreams/dream_\d+\.(png|gif)'
                      r'|episodes(_eval)?/\d+/ep\d+_\d+(-\d+)?-r-?\d+-\d+\.npz')
_RESUMED = re.compile(r'(?:Resumed from checkpoints/latest\.pt of run \w+|resuming run \w+ from \S+) at step (\d+)')


@dataclass
class Report:
    files: int = 0          # episode files read back
    rows: int = 0
    names: int = 0          # artifact names listed
    checkpoints: int = 0    # checkpoint reads
    violations: list[str] = field(default_factory=list)


class Job:
    """One launch.py run in its own process group, its output in a log file."""

    def __init__(self, args: list[str], cwd: Path, env: dict, log_path: Path, preexec_fn=None):
        self.log_path = log_path
        with open(log_path, 'w') as log:
            self.proc = subprocess.Popen(LAUNCH + args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=preexec_fn)

    def text(self) -> str:
        return self.log_path.read_text(errors='replace')

    def pid(self, name: str) -> int | None:
        found = re.search(rf'Started {name} \(pid (\d+)', self.text())
        return int(found[1]) if found else None

    def kill(self, target: str) -> str:
        """SIGKILL the target, or the whole group when the target has not started; returns what was killed."""
        pid = self.pid('generator-0' if target == 'generator' else 'learner') if target in TARGETS[:2] else None
        try:
            if pid is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                return 'launcher group'
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return target

    def wait(self, timeout: float) -> int | None:
        """The launcher's exit code once it and every process of its group are gone; None (and
        the group killed) if that takes longer than `timeout`."""
        deadline = time.time() + timeout
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        while group_alive(self.proc.pid) and time.time() < deadline:
            time.sleep(0.2)
        if code is None or group_alive(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None
        return code


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of the group remains."""
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if fields[0] != 'Z' and int(fields[2]) == pgid:
            return True
    return False


def resumed_step(log_text: str) -> int | None:
    found = _RESUMED.search(log_text)
    return int(found[1]) if found else None


def only_run_id() -> str:
    from pydreamer.tracking import client
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()])
    return runs[0].info.run_id if runs else ''


def checkpoint_step(run_id: str, report: Report, dst: Path) -> int | None:
    """The step of the run's latest.pt (None before the first save); an unreadable one is a violation."""
    from pydreamer.checkpoint import CheckpointError, RunCheckpoints
    shutil.rmtree(dst, ignore_errors=True)
    try:
        loaded = RunCheckpoints(run_id).read(str(dst))
    except CheckpointError as e:
        report.violations.append(str(e))
        return None
    if loaded is None:
        return None
    report.checkpoints += 1
    if loaded.passed_over:
        report.violations.append(loaded.passed_over)
    return int(loaded.payload['step'])


def check_run(run_id: str, dst: Path, report: Report) -> None:
    """Every listed episode file reads and matches its name, no episode index starts twice in a
    worker, and the run's listing holds no temporary name."""
    from pydreamer.artifacts import ArtifactFolder
    from pydreamer.episodes import CorruptEpisodeError, load_episode
    from pydreamer.tracking import client
    pending = ['']
    while pending:
        for info in client().list_artifacts(run_id, pending.pop() or None):
            if info.is_dir:
                pending.append(info.path)
                continue
            report.names += 1
            if not _VISIBLE.fullmatch(info.path):
                report.violations.append(f'a reader sees {info.path}')
    for split in ('episodes', 'episodes_eval'):
        for sub in ArtifactFolder(run_id, split).list_subfolders():
            worker = sub.rsplit('/', 1)[1]
            started: Counter[tuple[str, int]] = Counter()
            for path, name in ArtifactFolder(run_id, sub).list():
                try:
                    data = load_episode(ArtifactFolder(run_id, sub).download(path, dst / sub), name=path)
                except CorruptEpisodeError as e:
                    report.violations.append(str(e))
                    continue
                report.files += 1
                report.rows += len(data['reset'])
                first = name.ep_from if data['reset'][0] else name.ep_from + 1
                if len(data['reset']) != name.steps or data['reset'].sum() != name.ep_to + 1 - first:
                    report.violations.append(f'{path} holds {len(data["reset"])} rows and {data["reset"].sum()} '
                                             f'episode starts, which its name does not say')
                started.update((worker, e) for e in range(first, name.ep_to + 1))
            report.violations += [f'episode {e} of worker {w} starts in {n} files' for (w, e), n in started.items() if n > 1]
    shutil.rmtree(dst, ignore_errors=True)


def stray_temporaries(folder: Path) -> int:
    """Files under a local artifact root that a write left behind under a temporary (dot) name."""
    return sum(1 for p in folder.rglob('.*') if p.is_file())


def kills(n: int, rng: random.Random, work: Path, max_delay: float, report: Report) -> dict:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f'sqlite:///{work}/mlflow.db', TMPDIR=str(work / 'tmp'))
    (work / 'tmp').mkdir()
    os.environ['MLFLOW_TRACKING_URI'] = env['MLFLOW_TRACKING_URI']
    killed: Counter[str] = Counter()
    violations: Counter[str] = Counter()  # by the target killed before they showed
    run_id, expected, resumes = '', None, 0
    for cycle in range(n + 1):
        last = cycle == n
        args = ENDLESS + (['--resume_id', run_id] if run_id else ['--run_name', 'faults'])
        if last:
            args += ['--n_steps', str((expected or 0) + 10)]
        job = Job(args, work, env, work / f'cycle{cycle:03d}.log')
        if not last:
            time.sleep(rng.uniform(1.0, max_delay))
            target = job.kill(rng.choice(TARGETS))
            killed[target] += 1
        before = len(report.violations)
        code = job.wait(600 if last else 120)
        if code is None or last and code != 0:
            report.violations.append(f'cycle {cycle} ended with {code}: {job.text()[-1500:]}')
        run_id = run_id or only_run_id()
        found = resumed_step(job.text())
        if found is not None:
            resumes += 1
            if found != expected:
                report.violations.append(f'cycle {cycle} resumed at step {found}; the run held step {expected}')
        step = checkpoint_step(run_id, report, work / 'ckpt') if run_id else None
        if last and step != (expected or 0) + 10:
            report.violations.append(f'the last restart from step {expected} ended at step {step}')
        if step is not None and expected is not None and step < expected:
            report.violations.append(f'the checkpoint went back from step {expected} to {step}')
        expected = step if step is not None else expected
        violations['last restart' if last else target] += len(report.violations) - before
    before = len(report.violations)
    check_run(run_id, work / 'check', report)
    violations['files'] = len(report.violations) - before
    return {'killed': killed, 'violations': violations, 'resumes': resumes, 'final_step': expected,
            'stray': stray_temporaries(work / 'mlruns'), 'tmp_left': len(list((work / 'tmp').glob('pydreamer-*')))}


def start_server(root: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` (one worker, proxied artifacts) on loopback, in its own session."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION='false')
    env.pop('MLFLOW_TRACKING_URI', None)
    with open(root / 'server.log', 'a') as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / 'mlflow'), 'server', '--workers', '1',
                                 '--backend-store-uri', f'sqlite:///{root}/mlflow.db',
                                 '--artifacts-destination', str(root / 'artifacts'),
                                 '--host', '127.0.0.1', '--port', str(port)],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f'mlflow server on port {port} did not start: {(root / "server.log").read_text()[-2000:]}')


def server_restart(rng: random.Random, work: Path, report: Report) -> dict:
    from pydreamer.tracking import client
    root = work / 'server'
    root.mkdir()
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    uri = f'http://127.0.0.1:{port}'
    os.environ['MLFLOW_TRACKING_URI'] = uri
    env = dict(os.environ, TMPDIR=str(work / 'tmp'))
    (work / 'tmp').mkdir(exist_ok=True)
    server = start_server(root, port)
    n_steps = 300
    job = Job(['--n_steps', str(n_steps), '--save_interval', '5', '--run_name', 'server'], root, env,
              work / 'server.log')
    try:
        while job.proc.poll() is None and not re.search(r'learner: +\d+%.*\| +[2-9]\d/', job.text()):
            time.sleep(1)  # until the learner is past step 20
        time.sleep(rng.uniform(0, 5))
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        down_at = time.time()
        time.sleep(5)
        server = start_server(root, port)
        outage = time.time() - down_at
        code = job.wait(900)
        text = job.text()
        run_id = only_run_id()
        if code != 0:
            report.violations.append(f'the job against a restarted server ended with {code}: {text[-1500:]}')
        if checkpoint_step(run_id, report, work / 'ckpt') != n_steps:
            report.violations.append(f'the job against a restarted server did not reach step {n_steps}')
        before = report.files, report.rows
        check_run(run_id, work / 'check', report)
        stored = sum(int(n) for n in re.findall(r'Worker \d+ stored (\d+) steps', text))
        if report.rows - before[1] != stored:
            report.violations.append(f'the generator stored {stored} steps, its files hold {report.rows - before[1]}')
        logged = {m.step for m in client().get_metric_history(run_id, 'train/loss_model')}
        if logged != set(range(5, n_steps + 1, 5)):
            report.violations.append(f'train/loss_model lacks steps {sorted(set(range(5, n_steps + 1, 5)) - logged)}')
        return {'outage_s': outage, 'retries': text.count('Retrying (')}
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def one_sentence(job: Job, code: int | None, words: str, report: Report, what: str) -> None:
    text = job.text()
    errors = [line for line in text.splitlines() if line.startswith('error: ')]
    if code != 2 or len(errors) != 1 or words not in errors[0] or 'Traceback' in text:
        report.violations.append(f'{what}: exit {code}, error lines {errors}: {text[-1500:]}')


def full_disk(work: Path, report: Report) -> dict:
    disk = work / 'disk'
    (disk / 'mlruns').mkdir(parents=True)
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(disk / 'mlruns')],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {'skipped': f'mount not permitted ({mounted.stderr.strip()})'}
    try:
        os.environ['MLFLOW_TRACKING_URI'] = f'sqlite:///{disk}/mlflow.db'  # the store's database stays off the tmpfs
        env = dict(os.environ, TMPDIR=str(work / 'tmp'))
        (work / 'tmp').mkdir(exist_ok=True)
        sentences = []
        for attempt in ('run', 'resume'):
            args = ENDLESS + (['--resume_id', only_run_id()] if attempt == 'resume' else ['--run_name', 'disk'])
            job = Job(args, disk, env, work / f'disk-{attempt}.log')
            one_sentence(job, job.wait(300), 'No space left on device', report, f'full disk ({attempt})')
            sentences += [line for line in job.text().splitlines() if line.startswith('error: ')]
        run_id = only_run_id()
        checkpoint_step(run_id, report, work / 'ckpt')
        check_run(run_id, work / 'check', report)
        from pydreamer.tracking import client
        if client().get_run(run_id).info.status != 'FAILED':
            report.violations.append('the run stopped by a full disk is not FAILED')
        return {'stray': stray_temporaries(disk / 'mlruns'), 'sentences': sentences}
    finally:
        subprocess.run(['umount', str(disk / 'mlruns')], check=True)


def nonfinite(work: Path, report: Report) -> dict:
    from pydreamer.tracking import client
    folder = work / 'nan'
    folder.mkdir()
    os.environ['MLFLOW_TRACKING_URI'] = f'sqlite:///{folder}/mlflow.db'
    env = dict(os.environ, TMPDIR=str(work / 'tmp'))
    (work / 'tmp').mkdir(exist_ok=True)
    job = Job(['--adam_lr', '1e30', '--max_nonfinite_steps', '8', '--run_name', 'nan'], folder, env,
              work / 'nan.log')
    one_sentence(job, job.wait(300), 'not finite for 8 learner steps in a row', report, 'non-finite loss')
    run_id = only_run_id()
    skipped = [m.value for m in client().get_metric_history(run_id, 'train/nonfinite_skipped')]
    if not skipped or max(skipped) <= 0:
        report.violations.append(f'train/nonfinite_skipped was not logged above 0: {skipped}')
    check_run(run_id, work / 'check', report)
    return {'skipped': skipped, 'sentence': [line for line in job.text().splitlines() if line.startswith('error: ')]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kills', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-delay', type=float, default=30.0, help='latest kill, seconds after a (re)start')
    parser.add_argument('--scenarios', default='kills,server,disk,nan')
    parser.add_argument('--keep', action='store_true', help='keep the work folder and print it')
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    report = Report()
    rows, notes = [], []  # (fault, injected, violations)
    work_root = Path(tempfile.mkdtemp(prefix='pydreamer-faults-'))
    start = time.time()
    try:
        for scenario in args.scenarios.split(','):
            work = work_root / scenario
            work.mkdir()
            before = len(report.violations)
            if scenario == 'kills':
                out = kills(args.kills, rng, work, args.max_delay, report)
                rows += [(f'SIGKILL {t}, restart --resume_id', out['killed'][t], out['violations'][t]) for t in TARGETS]
                rows.append(('last restart: 10 more steps to exit 0', 1, out['violations']['last restart']))
                rows.append(('files of the killed run, read back', '', out['violations']['files']))
                notes.append(f'kills: the learner resumed {out["resumes"]} times, each at the step of the checkpoint '
                             f'the run held; final step {out["final_step"]}; left by killed processes, invisible '
                             f'to readers: {out["stray"]} staging files in mlruns, {out["tmp_left"]} folders in TMPDIR')
            elif scenario == 'server':
                out = server_restart(rng, work, report)
                rows.append(('mlflow server SIGKILLed, restarted', 1, len(report.violations) - before))
                notes.append(f'server: outage {out["outage_s"]:.0f} s, client retries logged {out["retries"]}')
            elif scenario == 'disk':
                out = full_disk(work, report)
                rows.append(('artifact disk full (2 MB tmpfs): run, resume', 0 if 'skipped' in out else 2,
                             len(report.violations) - before))
                notes.append(f'disk: {out}')
            elif scenario == 'nan':
                out = nonfinite(work, report)
                rows.append(('loss not finite (adam_lr 1e30)', 1, len(report.violations) - before))
                notes.append(f'nan: train/nonfinite_skipped {out["skipped"]}; {out["sentence"]}')
            else:
                parser.error(f'unknown scenario {scenario!r}')
    finally:
        if args.keep:
            print(f'work folder: {work_root}')
        else:
            shutil.rmtree(work_root, ignore_errors=True)
    print(f'{"fault":46} {"injected":>9} {"violations":>11}')
    for name, count, violations in rows:
        print(f'{name:46} {count:>9} {violations:>11}')
    print(f'checked: {report.files} episode files ({report.rows:,} rows), {report.checkpoints} checkpoint reads, '
          f'{report.names} listed artifact names; wall {time.time() - start:.0f} s')
    for note in notes:
        print(note)
    for violation in report.violations:
        print(f'VIOLATION: {violation}')
    print(f'violations: {len(report.violations)}')
    return 1 if report.violations else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
