"""Finding a transformers checkpoint on disk or in the Hugging Face cache before loading it.

Every check here runs before any weights are read, so a missing or unusable
checkpoint fails with a :class:`ModelConfigError` that names it, instead of a
download attempt that hangs without network or a shape error deep in loading.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ecdna_exp.models.base import ModelConfigError

log = logging.getLogger(__name__)

#: Repository of Pixtral-12B converted to the transformers format (``LlavaForConditionalGeneration``).
PIXTRAL_TRANSFORMERS_REPO = "mistral-community/pixtral-12b"

#: Files that only the original Mistral format has. Transformers cannot load such a folder.
MISTRAL_FORMAT_FILES = ("params.json", "consolidated.safetensors", "tekken.json")

_HOW_TO_PROVIDE = (
    "Download it on a machine with network access (`hf download {repo_id}` fills the Hugging Face "
    "cache, which HF_HOME or HF_HUB_CACHE may point to) and copy the cache here, or set "
    "model.checkpoint to a local folder, or set checkpoint_dir to a folder that contains {local_name!r}."
)


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Location of the weights of one configured checkpoint.

    ``source`` is a local folder, or a hub id when the checkpoint is not cached
    yet and will be downloaded. ``commit_hash`` is the cached snapshot's commit,
    or None for a plain folder or a pending download.
    """

    checkpoint: str
    source: str
    revision: str | None
    commit_hash: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()


def hub_offline() -> bool:
    """Return True when downloads from the hub are disabled (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(flag.upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def _looks_like_path(checkpoint: str) -> bool:
    return checkpoint.startswith(("/", "./", "../", "~")) or checkpoint.count("/") > 1


def check_transformers_format(folder: Path, checkpoint: str) -> None:
    """Raise :class:`ModelConfigError` unless ``folder`` contains a checkpoint in the transformers format.

    A Mistral-format folder (``params.json``, ``consolidated.safetensors``, no
    ``config.json``) is rejected with the name of the converted repository.
    """
    names = {path.name for path in folder.iterdir()}
    if "config.json" in names:
        return
    if names & set(MISTRAL_FORMAT_FILES):
        raise ModelConfigError(
            f"checkpoint {checkpoint!r} at {folder} is in the original Mistral format "
            f"({', '.join(sorted(names & set(MISTRAL_FORMAT_FILES)))}, no config.json), which transformers "
            f"cannot load. For Pixtral-12B use the transformers-format repository {PIXTRAL_TRANSFORMERS_REPO!r}."
        )
    raise ModelConfigError(
        f"checkpoint folder {folder} (from {checkpoint!r}) contains no config.json. "
        "Point model.checkpoint or checkpoint_dir at a folder written by save_pretrained()"
    )


def _resolve_folder(folder: Path, checkpoint: str, revision: str | None) -> ResolvedCheckpoint:
    if not folder.is_dir():
        raise ModelConfigError(
            f"checkpoint folder {folder} for {checkpoint!r} not found. Build the tiny test models with "
            "`python -m ecdna_exp.models.tiny --out .tiny-models`, or save a real checkpoint there."
        )
    check_transformers_format(folder, checkpoint)
    return ResolvedCheckpoint(checkpoint=checkpoint, source=str(folder.resolve()), revision=revision)


def _check_remote_files(repo_id: str, revision: str | None, local_name: str) -> None:
    """Reject a Mistral-format hub repository from its file list, before anything is downloaded.

    One request with a 10 s timeout and no retries, so an unreachable hub fails quickly.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=10.0)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ModelConfigError(
            f"checkpoint {repo_id!r} (revision {revision or 'main'}) not found on the hub, or it is gated or "
            f"private and no valid token is set (`hf auth login`): {error}"
        ) from error
    # huggingface_hub raises the errors of its HTTP library (requests, httpx or httpx2, by version),
    # so every failure of this one request is reported as the hub being unreachable, with its text.
    except Exception as error:
        raise ModelConfigError(
            f"checkpoint {repo_id!r} (revision {revision or 'main'}) is not in the local Hugging Face cache "
            f"and the hub could not be reached: {error}. "
            + _HOW_TO_PROVIDE.format(repo_id=repo_id, local_name=local_name)
        ) from error
    names = {sibling.rfilename for sibling in info.siblings or []}
    if "config.json" not in names and names & set(MISTRAL_FORMAT_FILES):
        raise ModelConfigError(
            f"checkpoint {repo_id!r} is in the original Mistral format (no config.json), which transformers "
            f"cannot load. For Pixtral-12B use the transformers-format repository {PIXTRAL_TRANSFORMERS_REPO!r}."
        )


def resolve_checkpoint(
    checkpoint: str,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    local_name: str | None = None,
    revision: str | None = None,
) -> ResolvedCheckpoint:
    """Locate the weights for ``checkpoint`` without loading them.

    Parameters
    ----------
    checkpoint : str
        Hub id such as ``"Qwen/Qwen2-VL-7B-Instruct"``, or a local folder.
    checkpoint_dir : path-like, optional
        Folder of locally stored checkpoints. When set, the weights are read
        from ``checkpoint_dir / local_name`` and ``checkpoint`` is only a label.
    local_name : str, optional
        Sub-folder name under ``checkpoint_dir``.
    revision : str, optional
        Branch, tag or commit hash on the hub; None means ``main``.

    Returns
    -------
    ResolvedCheckpoint

    Raises
    ------
    ModelConfigError
        The folder is missing or not in the transformers format, or the hub id
        is not cached while the hub is offline or unreachable.
    """
    if checkpoint_dir is not None:
        if not local_name:
            raise ModelConfigError(f"checkpoint_dir={checkpoint_dir} is set but model.local_name is empty")
        return _resolve_folder(_absolute(checkpoint_dir) / local_name, checkpoint, revision)

    local = Path(checkpoint).expanduser()
    if local.is_dir() or _looks_like_path(checkpoint):
        return _resolve_folder(_absolute(local), checkpoint, revision)

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(checkpoint, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as error:
        if hub_offline():
            incomplete = (
                f" The cached copy is incomplete: {error}"
                if isinstance(error, IncompleteSnapshotError)
                else ""
            )
            raise ModelConfigError(
                f"checkpoint {checkpoint!r} (revision {revision or 'main'}) is not in the local Hugging Face "
                f"cache and the hub is offline (HF_HUB_OFFLINE is set).{incomplete} "
                + _HOW_TO_PROVIDE.format(repo_id=checkpoint, local_name=local_name or "NAME")
            ) from None
        _check_remote_files(checkpoint, revision, local_name or "NAME")
        log.info("checkpoint %s is not cached; transformers will download it", checkpoint)
        return ResolvedCheckpoint(checkpoint=checkpoint, source=checkpoint, revision=revision)

    check_transformers_format(snapshot, checkpoint)
    return ResolvedCheckpoint(
        checkpoint=checkpoint, source=str(snapshot), revision=revision, commit_hash=snapshot.name
    )


def _absolute(path: str | os.PathLike) -> Path:
    """Resolve a relative path against the directory the user started from, also inside a Hydra job."""
    from hydra.utils import to_absolute_path

    return Path(to_absolute_path(str(Path(path).expanduser())))
