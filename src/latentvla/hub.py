"""Hugging Face Hub names, resolved the way transformers and LeRobot resolve them.

    resolve_model("Qwen/Qwen3-VL-4B-Instruct")      -> $HF_HUB_CACHE/models--Qwen--Qwen3-VL-4B-Instruct/snapshots/<commit>
    resolve_model("facebook/dinov2-large@<commit>")  -> that revision's snapshot (ORG/NAME@REV pins a branch/tag/commit)
    resolve_model("models/qwen")                     -> models/qwen (an existing local directory always wins)
    resolve_dataset("lerobot/libero_object_image")   -> $HF_LEROBOT_HOME/lerobot/libero_object_image

Models go through `huggingface_hub.snapshot_download` with the cache at `HF_HUB_CACHE`, else `HF_HOME/hub`
(default ~/.cache/huggingface/hub): the `models--ORG--NAME/snapshots/<commit>` + `refs/<branch>` layout that
`hf download` and transformers write. Datasets live under `HF_LEROBOT_HOME` (default `HF_HOME/lerobot`) as
`<repo_id>/`, as LeRobot's `LeRobotDataset(repo_id)` keeps them (lerobot/utils/constants.py). With
`HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) only the cache is read; online a missing id is downloaded.
Either way a miss is ONE line naming the exact path looked in and the command that fills it.

The environment is read at call time (not at import, unlike `huggingface_hub.constants`), so a process or a
test that sets `HF_HOME` / `HF_HUB_OFFLINE` late still gets what it asked for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# ORG/NAME with the hub's characters (huggingface_hub.utils.validate_repo_id), optionally @REVISION.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = ("1", "ON", "YES", "TRUE")


class HubError(FileNotFoundError, ValueError):
    """A hub id that is not in the cache (offline) or could not be downloaded (online); one line. Both a
    FileNotFoundError and a ValueError, so every CLI's bad-input handler (exit 2) catches it."""


def hf_home() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface"
    return Path(os.environ.get("HF_HOME", default)).expanduser()


def hub_cache() -> Path:
    """Where model snapshots live: HF_HUB_CACHE, else HF_HOME/hub (huggingface_hub.constants)."""
    return Path(os.environ.get("HF_HUB_CACHE", hf_home() / "hub")).expanduser()


def lerobot_home() -> Path:
    """Where LeRobot datasets live: HF_LEROBOT_HOME, else HF_HOME/lerobot (lerobot/utils/constants.py)."""
    return Path(os.environ.get("HF_LEROBOT_HOME", hf_home() / "lerobot")).expanduser()


def offline() -> bool:
    return any(os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def split_revision(name: str) -> tuple[str, str | None]:
    """'ORG/NAME@REV' -> ('ORG/NAME', 'REV'); no '@' -> (name, None)."""
    repo, sep, rev = str(name).partition("@")
    return (repo, rev or None) if sep else (repo, None)


def is_hub_id(name: str | os.PathLike) -> bool:
    """True for 'ORG/NAME[@REV]' that is not an existing local path (a local directory always wins)."""
    s = str(name)
    if Path(s).expanduser().exists() or s.startswith((".", "/", "~")):
        return False
    repo, _ = split_revision(s)
    return bool(_REPO_ID.match(repo)) and ".." not in repo and "--" not in repo


def model_cache_dir(repo_id: str) -> Path:
    return hub_cache() / f"models--{repo_id.replace('/', '--')}"


def resolve_model(name: str | os.PathLike, flag: str = "model") -> Path:
    """A local directory for a model directory or a hub id (see module docstring); `flag` names the option in
    errors (e.g. '--backbone')."""
    s = str(name)
    if not is_hub_id(s):
        return Path(s).expanduser()
    repo, revision = split_revision(s)
    from huggingface_hub import snapshot_download

    cache = hub_cache()
    where = model_cache_dir(repo) / "snapshots"
    fill = f"`hf download {repo}" + (f" --revision {revision}" if revision else "") + "`"
    local_only = offline() or (revision is not None and _COMMIT.match(revision) is not None)
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, or a broken ref: fall through to download / the error
        if local_only:
            why = "HF_HUB_OFFLINE is set" if offline() else f"revision {revision} is a commit"
            raise HubError(
                f"{flag} {s}: not a local directory and not in the Hugging Face cache ({where}"
                f"{'/' + revision if revision and _COMMIT.match(revision) else ''} has no snapshot; {why}); "
                f"fill the cache with {fill} (HF_HOME={hf_home()}) or pass a local model directory."
            ) from e
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache))
    except Exception as e:  # no network, gated, unknown repo: one line, the cause included
        msg = " ".join(str(e).split())[:200]
        raise HubError(
            f"{flag} {s}: not in the Hugging Face cache ({where}) and the download failed ({type(e).__name__}: "
            f"{msg}); fill the cache with {fill} on a machine with access, or pass a local model directory."
        ) from e


def pinned_model_id(name: str | os.PathLike, local: Path) -> str:
    """What a config records for a model: an absolute local directory, or for a hub id 'ORG/NAME@<commit>' (the
    snapshot it resolved to), so a checkpoint rebuilds its base from the same weights on another machine."""
    s = str(name)
    if not is_hub_id(s):
        return str(Path(local).resolve())
    repo, _ = split_revision(s)
    commit = Path(local).name
    return f"{repo}@{commit}" if _COMMIT.match(commit) else repo


def resolve_dataset(name: str | os.PathLike) -> Path:
    """A local dataset directory for a directory or a LeRobot repo id (HF_LEROBOT_HOME/<repo_id>, as LeRobot).

    Anything that is not id-like comes back unchanged, so the reader's own errors (no such directory, an
    interrupted write's `.partial`) still apply to local paths."""
    s = str(name)
    path = Path(s).expanduser()
    if not is_hub_id(s) or path.with_name(path.name + ".partial").exists():
        return path
    repo, revision = split_revision(s)
    root = lerobot_home() / repo
    if (root / "meta" / "info.json").is_file():
        return root
    fill = f"`hf download {repo} --repo-type dataset --local-dir {root}`"
    if offline():
        raise HubError(
            f"dataset {s}: no such local directory, and not in the LeRobot cache ({root} has no meta/info.json; "
            f"HF_HUB_OFFLINE is set); fill it with {fill} (HF_LEROBOT_HOME={lerobot_home()}) or pass a dataset "
            "directory."
        )
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, repo_type="dataset", revision=revision, local_dir=root)
    except Exception as e:
        msg = " ".join(str(e).split())[:200]
        raise HubError(
            f"dataset {s}: no such local directory, not in the LeRobot cache ({root}) and the download failed "
            f"({type(e).__name__}: {msg}); fill it with {fill} or pass a dataset directory."
        ) from e
    return root
