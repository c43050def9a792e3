"""Push a sparse checkpoint folder to the Hugging Face Hub as one commit."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .checkpoint import PROVENANCE_FILE, STATE_DIR, load_sparse
from .errors import ConfigError, HfPxError, PushError

# never uploaded: resumable-run state and hidden files (editor/OS droppings, temporary folders)
IGNORE_PATTERNS = [f"{STATE_DIR}/*", ".*", "*/.*"]   # the resume state and hidden scratch folders
_LOGIN = "run `hf auth login`, or set HF_TOKEN to a token with write access"


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Create `repo_id` (a model repo, kept if it exists) and upload `folder` in one commit; return its URL.

    The folder is first checked offline to be a complete hf_px checkpoint (`load_sparse`). The token is
    `token`, else `HF_TOKEN` or the stored login, as huggingface_hub resolves it; it is never printed.
    """
    from huggingface_hub import HfApi

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"folder {str(folder)!r} does not exist or is not a folder; give a folder written by "
                          "hf-px prune --output")
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ConfigError(f"repo_id={repo_id!r}: give the Hub repo to push to as ORG/NAME")
    load_sparse(folder)   # a complete, consistent checkpoint, or a ModelError saying what is wrong
    if commit_message is None:
        commit_message = _default_message(folder)
    api = HfApi(token=token)
    with _push_errors(repo_id):
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_url.repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message=commit_message, ignore_patterns=IGNORE_PATTERNS)
    return str(commit.commit_url)


def _default_message(folder: Path) -> str:
    record = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    sparsity = record.get("sparsity")
    amount = f" at {sparsity:.0%} sparsity" if isinstance(sparsity, (int, float)) else ""
    return f"Upload {record.get('method', 'sparse')} checkpoint{amount} (hf-px)"


@contextmanager
def _push_errors(repo_id: str) -> Iterator[None]:
    """Turn huggingface_hub / network errors into one `PushError` line with a hint; never echo the token."""
    try:
        yield
    except HfPxError:
        raise
    except Exception as error:
        translated = _translate(error, repo_id)
        if translated is None:
            raise
        raise translated from None


def _translate(error: Exception, repo_id: str) -> HfPxError | None:
    from huggingface_hub.errors import (
        HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
    )

    if isinstance(error, OfflineModeIsEnabled):
        return PushError(f"cannot push to {repo_id!r}: offline mode is on (HF_HUB_OFFLINE); unset it and retry")
    if isinstance(error, LocalTokenNotFoundError):
        return PushError(f"cannot push to {repo_id!r}: no Hugging Face token found; {_LOGIN}")
    if isinstance(error, HFValidationError):
        return ConfigError(f"{repo_id!r} is not a valid Hub repo id; use ORG/NAME (letters, digits, '-', '_', '.')")
    if isinstance(error, RepositoryNotFoundError):
        return PushError(f"cannot push to {repo_id!r}: the repo is not visible with these credentials; {_LOGIN}")
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return PushError(f"the Hub refused the push to {repo_id!r} (HTTP {status}); {_LOGIN} "
                             "(a fine-grained token needs write access to that namespace)")
        return PushError(f"the Hub rejected the push to {repo_id!r} (HTTP {status}); try again later")
    if isinstance(error, OSError) or _is_network_error(error):
        return PushError(f"cannot reach the Hugging Face Hub to push to {repo_id!r} ({type(error).__name__}); "
                         "check the network connection and retry")
    return None


def _is_network_error(error: Exception) -> bool:
    """A transport failure of whichever HTTP client this huggingface_hub uses (requests, httpx, httpx2)."""
    from huggingface_hub import errors

    kinds = [kind for kind in (getattr(errors, "HTTPError", None),) if isinstance(kind, type)]
    try:
        import httpx

        kinds.append(httpx.HTTPError)
    except ImportError:
        pass
    return isinstance(error, tuple(kinds))
