"""The Hugging Face Hub boundary: fail fast without a network, check push access before the work, and push
a sparse checkpoint folder as one commit. Network failures become one error class, `HubError` (an OSError).
"""

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from .checkpoint import STATE_DIR, open_sparse
from .errors import ConfigError, HfPxError, HubError, ModelError, PushError

# never uploaded: resumable-run state and hidden files (editor/OS droppings, temporary folders)
IGNORE_PATTERNS = [f"{STATE_DIR}/*", ".*", "*/.*"]   # the resume state and hidden scratch folders
_LOGIN = "run `hf auth login`, or set HF_TOKEN to a token with write access"
_OFFLINE_HINT = "check the network, or set HF_HUB_OFFLINE=1 to use only local folders and the local cache"
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_PROBED: dict[str, str | None] = {}   # endpoint -> why it cannot be reached (None: reachable), once per process



def offline() -> bool:
    """True when offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): the libraries read only the cache."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


@contextmanager
def download_errors(source: str, repo_id: str, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub / transformers / timm download errors into one-line errors: `HubError` when the
    Hub cannot be reached (or failed), `ModelError` for what the user can fix (id, revision, access).
    `source` is what the user gave, `repo_id` the repo it names. Every download of hf_px runs inside it."""
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled,
        RepositoryNotFoundError, RevisionNotFoundError,
    )

    login = "run `hf auth login` or set HF_TOKEN with a token that has access"
    try:
        yield
    except GatedRepoError:
        raise ModelError(
            f"Hub repo {repo_id!r} is gated; accept its conditions on its Hub page, then {login}"
        ) from None
    except RepositoryNotFoundError:
        close = _similar_hub_ids(repo_id)
        hint = f"similar ids: {', '.join(close)}" if close else "check the spelling"
        raise ModelError(
            f"Hub repo {repo_id!r} (from {source!r}) does not exist or is private; {hint}; if private, {login}"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(
            f"Hub repo {repo_id!r} has no revision {revision!r}; give an existing branch, tag or commit"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        if offline():
            raise HubError(
                f"{source!r} is not in the local Hugging Face cache and offline mode is on (HF_HUB_OFFLINE); "
                "download it once online, unset HF_HUB_OFFLINE, or give a local folder"
            ) from None
        raise HubError(
            f"cannot reach the Hugging Face Hub to fetch {source!r} and it is not cached; check the network "
            "connection, or give a local folder"
        ) from None
    except HFValidationError:
        raise ModelError(
            f"{source!r} is not a valid Hub id (ORG/NAME, letters, digits, '-', '_', '.'), timm name or folder"
        ) from None
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise ModelError(f"access to Hub repo {repo_id!r} was refused (HTTP {status}); {login}") from None
        raise HubError(f"the Hub request for {source!r} failed (HTTP {status}); try again later") from None
    except OSError as error:   # transformers wraps most download failures in OSError
        hint = ("offline mode is on (HF_HUB_OFFLINE) and it is not cached" if offline()
                else "check the id, the revision and the network")
        raise ModelError(f"cannot load {source!r}: {first_line(error)} ({hint})") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _similar_hub_ids(repo_id: str) -> list[str]:
    """Up to 5 Hub model ids found by searching for the repo's name; [] offline or on any failure."""
    if offline():
        return []
    try:
        from huggingface_hub import HfApi

        return [info.id for info in HfApi().list_models(search=repo_id.rpartition("/")[2], limit=5)]
    except Exception:   # suggestions are a courtesy: never let them replace the real error
        return []


def require_hub(what: str) -> None:
    """Raise `HubError` at once when the Hub's host cannot be reached, before a request would spend half a
    minute in retries. Skipped in offline mode (the libraries answer from the cache at once) and behind a
    proxy (a direct connection proves nothing there). One TCP connection per process, remembered."""
    if offline() or any(os.environ.get(name) for name in _PROXIES):
        return
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if endpoint not in _PROBED:
        url = urlparse(endpoint)
        host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
        try:
            socket.create_connection((host, port), timeout=5).close()
            _PROBED[endpoint] = None
        except OSError as error:
            _PROBED[endpoint] = f"{host}:{port}: {error.strerror or error}"
    if _PROBED[endpoint] is not None:
        raise HubError(f"cannot reach the Hugging Face Hub ({_PROBED[endpoint]}) to {what}; {_OFFLINE_HINT}")


def check_push_access(repo_id: str, token: str | None = None) -> None:
    """Before any work: `repo_id` is a valid id, a token is there, and (where the Hub answers) it may write to
    the repo's namespace. Raises `ConfigError` for a bad id and `HubError` for everything else."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import validate_repo_id

    with _push_errors(repo_id):
        validate_repo_id(repo_id)
    if offline():
        raise HubError(f"cannot push to {repo_id!r}: offline mode is on (HF_HUB_OFFLINE); unset it, or save with "
                       "--output and push later with `hf-px push DIR REPO`")
    if not (token or get_token()):
        raise HubError(f"cannot push to {repo_id!r}: no Hugging Face token found; {_LOGIN}")
    require_hub(f"push to {repo_id!r}")
    with _push_errors(repo_id):
        me = HfApi(token=token).whoami()
    name = me.get("name")
    namespace = repo_id.partition("/")[0] if "/" in repo_id else name
    orgs = {org.get("name"): org.get("roleInOrg") for org in me.get("orgs") or []}
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read" or (namespace in orgs and orgs[namespace] == "read"):
        raise HubError(f"cannot push to {repo_id!r}: the token of {name!r} is read-only there; {_LOGIN}")
    if namespace != name and namespace not in orgs:
        raise HubError(f"cannot push to {repo_id!r}: {name!r} is not a member of {namespace!r} (its namespaces: "
                       f"{', '.join([name, *orgs])}); push to one of those, or {_LOGIN}")


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
    _, _, record = open_sparse(folder)   # a complete, consistent checkpoint, or a ModelError saying what is wrong
    require_hub(f"push to {repo_id!r}")
    if commit_message is None:
        amount = f" at {record.sparsity:.0%} sparsity" if record.sparsity is not None else ""
        commit_message = f"Upload {record.method or 'sparse'} checkpoint{amount} (hf-px)"
    api = HfApi(token=token)
    with _push_errors(repo_id):
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_url.repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message=commit_message, ignore_patterns=IGNORE_PATTERNS)
    return str(commit.commit_url)


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
