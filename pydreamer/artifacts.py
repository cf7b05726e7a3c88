"""An artifact folder of an mlflow run, on the local store or behind a tracking server.

Generators and learners exchange episode files and checkpoints only through these folders, so
the same code serves the embedded store (sqlite `mlflow.db` + `./mlruns`) and a server
(`MLFLOW_TRACKING_URI=http://…`, artifacts proxied as `mlflow-artifacts:` URIs). It uses the
tracking URI configured when the folder is created and mlflow's public artifact repository API.

Writes are atomic for readers: a reader lists and downloads whole files or nothing. Only a
missing file means "not there yet"; any other failure (network, permission) propagates with its
cause.
"""
from __future__ import annotations

import functools
import os
import posixpath
import shutil
import tempfile
import uuid

from pydreamer.tracking import mlflow  # first: it imports mlflow without its heavy extras
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient

from pydreamer.atomic import atomic_write
from pydreamer.episodes import EpisodeFile

# The prefix of mlflow's own staging files (local_artifact_repo._TEMP_ARTIFACT_PREFIX). Its local
# listing drops such names before it stats each file, so a staging file renamed between the
# directory read and the stat cannot make a concurrent listing fail.
STAGING_PREFIX = '.artifact.uploading.'

# mlflow draws a progress bar per download by default: one per episode file would flood the
# learner's log. setdefault keeps a user's explicit choice.
os.environ.setdefault('MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR', 'false')


@functools.lru_cache(maxsize=64)
def _repository(tracking_uri: str, run_id: str) -> ArtifactRepository:
    # A run's artifact URI never changes, so one look-up per process is enough.
    run = MlflowClient(tracking_uri).get_run(run_id)
    return get_artifact_repository(run.info.artifact_uri, tracking_uri=tracking_uri)


def _join(*parts: str) -> str:
    return '/'.join(p.strip('/') for p in parts if p.strip('/'))


class ArtifactFolder:
    """The artifact folder `path` (e.g. `episodes/0`) of run `run_id`.

    Artifact paths taken and returned by the methods are relative to the run's artifact root
    (e.g. `episodes/0/ep000000_000004-0-r12-1013.npz`, `checkpoints/latest.pt`).
    """

    def __init__(self, run_id: str, path: str = ''):
        self.run_id = run_id
        self.path = path.strip('/')
        self.tracking_uri = mlflow.get_tracking_uri()

    def __repr__(self) -> str:
        return f'ArtifactFolder({self.run_id!r}, {self.path!r})'

    @property
    def _repo(self) -> ArtifactRepository:
        return _repository(self.tracking_uri, self.run_id)

    def list(self) -> list[tuple[str, EpisodeFile]]:
        """(artifact path, parsed name) of the episode files in this folder; other files, such as
        temporary ones, are ignored. A folder that does not exist yet is empty."""
        files = []
        for info in self._repo.list_artifacts(self.path or None):
            parsed = None if info.is_dir else EpisodeFile.parse(info.path)
            if parsed is not None:
                files.append((info.path, parsed))
        return files

    def list_subfolders(self) -> list[str]:
        """Artifact paths of the folders inside this one (e.g. the worker folders of `episodes`)."""
        return [info.path for info in self._repo.list_artifacts(self.path or None) if info.is_dir]

    def exists(self, artifact_path: str) -> bool:
        artifact_path = artifact_path.strip('/')
        parent = posixpath.dirname(artifact_path)
        return any(info.path == artifact_path and not info.is_dir
                   for info in self._repo.list_artifacts(parent or None))

    def upload(self, local_file: str | os.PathLike) -> str:
        """Upload a file into this folder under its own name; returns its artifact path."""
        return self.upload_file(local_file, self.path)

    def upload_file(self, local_file: str | os.PathLike, artifact_dir: str) -> str:
        """Upload a file into `artifact_dir` of the run, replacing a file of the same name so that
        readers see either the old or the new file whole; returns its artifact path."""
        name = os.path.basename(local_file)
        repo = self._repo
        if isinstance(repo, LocalArtifactRepository):
            local_dir = os.path.join(repo.artifact_dir, *filter(None, _join(artifact_dir).split('/')))
            _copy_atomically(local_file, local_dir, name)
        else:
            # A remote upload is already atomic for readers. The client sends the file as one PUT
            # (multipart only if MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD is set and the server's store
            # supports it; the object then appears when the upload completes). The server
            # (mlflow/server/artifact_router.py `upload_artifact`, or handlers.py `_upload_artifact`
            # under gunicorn) streams the body into a `.artifact.uploading.*` staging file in the
            # destination folder and os.replace()s it onto the final name only after the whole
            # body arrived; a broken connection deletes the staging file, and listings hide the
            # staging prefix (local_artifact_repo.py). Cloud destinations get a single object PUT.
            repo.log_artifact(os.fspath(local_file), _join(artifact_dir) or None)
        return _join(artifact_dir, name)

    def download(self, artifact_path: str, dst_dir: str | os.PathLike) -> str:
        """`download_file` for a file of this folder (or of one inside it), e.g. a listed episode."""
        if self.path and not artifact_path.strip('/').startswith(self.path + '/'):
            raise ValueError(f'Artifact {artifact_path} is not inside folder {self.path} of run {self.run_id}.')
        return self.download_file(artifact_path, dst_dir)

    def download_file(self, artifact_path: str, dst_dir: str | os.PathLike) -> str:
        """Download a file of the run to `dst_dir/<its name>` and return that local path.

        The file appears there whole (downloaded under a temporary name, then renamed). Raises
        FileNotFoundError when the run has no such file; other failures propagate as they are.
        """
        artifact_path = artifact_path.strip('/')
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, posixpath.basename(artifact_path))
        with tempfile.TemporaryDirectory(dir=dst_dir, prefix='.download-') as tmp:
            try:
                local = self._repo.download_artifacts(artifact_path, tmp)
            except MlflowException as e:
                # mlflow wraps every download failure in an MlflowException; only a listing tells
                # a missing file apart from a failing transfer.
                if not self.exists(artifact_path):
                    raise FileNotFoundError(
                        f'Artifact {artifact_path} of run {self.run_id} does not exist.') from e
                raise
            if not os.path.isfile(local):
                raise IsADirectoryError(
                    f'Artifact {artifact_path} of run {self.run_id} is a folder, not a file.')
            os.replace(local, dst)
        return dst


def _copy_atomically(src: str | os.PathLike, dst_dir: str, name: str) -> None:
    # mlflow 3.17's local store stages uploads too, but older versions copied in place; doing it
    # here keeps the guarantee whatever the version and adds an fsync before the rename.
    os.makedirs(dst_dir, exist_ok=True)
    with open(src, 'rb') as fin, atomic_write(os.path.join(dst_dir, name),
                                              f'{STAGING_PREFIX}{uuid.uuid4().hex}.{name}') as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
