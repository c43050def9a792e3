"""push_folder up to the network boundary (HfApi calls recorded), its errors, and one real push that runs only
with a token and a reachable Hub."""

import os
import socket
import sys
import uuid

import pytest
import torch

import hf_px
from hf_px import hub
from hf_px.checkpoint import save_sparse
from hf_px.errors import ConfigError, HfPxError, ModelError
from hf_px.hub import push_folder
from hf_px.models import LoadedModel
from hf_px.testing import random_batches


def _http_client():
    """The httpx-like module this huggingface_hub speaks HTTP with (httpx or httpx2)."""
    from huggingface_hub import errors

    kind = getattr(errors, "HTTPError", None)
    if not isinstance(kind, type) or not kind.__module__.startswith("httpx"):
        pytest.skip("this huggingface_hub does not use an httpx-like client")
    return sys.modules[kind.__module__.split(".")[0]]


def _refuse(*args, **kwargs):
    raise AssertionError(f"a test tried to open a network connection: {args}")


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A complete checkpoint of a tiny timm resnet18, plus a resume/ folder and a hidden file not to upload."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    masks = hf_px.prune(model, random_batches(n_batches=1, num_classes=3), method="magnitude", sparsity=0.5,
                        rounds=1)
    loaded = LoadedModel(model=model, library="timm", source="resnet18", hub_id=None, revision=None,
                         preprocess=lambda image: image, label_names=None,
                         pretrained_cfg={**model.pretrained_cfg, "input_size": (3, 32, 32)})
    provenance = {"method": "magnitude", "sparsity": 0.5, "rounds": 1, "seed": 0}
    output = save_sparse(loaded, masks, tmp_path_factory.mktemp("push") / "ckpt", provenance=provenance, card="# card\n")
    (output / "resume").mkdir()
    (output / "resume" / "state.safetensors").write_bytes(b"")
    (output / ".DS_Store").write_bytes(b"")
    return output


@pytest.fixture
def recorded(monkeypatch):
    """HfApi.create_repo / upload_folder replaced by recorders; returns the list of calls."""
    from huggingface_hub import HfApi, RepoUrl

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))

        class Commit:
            commit_url = f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123"
        return Commit()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_is_one_repo_creation_and_one_commit(folder, recorded, offline):
    url = push_folder(folder, "me/tiny-px", private=True, commit_message="first")
    assert url == "https://huggingface.co/me/tiny-px/commit/abc123"
    assert [call[0] for call in recorded] == ["create_repo", "upload_folder"]
    _, repo_id, create = recorded[0]
    assert repo_id == "me/tiny-px" and create == {"private": True, "exist_ok": True, "repo_type": "model"}
    _, repo_id, upload = recorded[1]
    assert repo_id == "me/tiny-px" and upload["folder_path"] == str(folder) and upload["repo_type"] == "model"
    assert upload["commit_message"] == "first"
    assert "resume/*" in upload["ignore_patterns"] and ".*" in upload["ignore_patterns"]


def test_ignore_patterns_keep_the_checkpoint_and_drop_resume_and_hidden_files(folder):
    from huggingface_hub.utils import filter_repo_objects

    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    kept = set(filter_repo_objects(files, ignore_patterns=hub.IGNORE_PATTERNS))
    assert {"config.json", "model.safetensors", "hf_px_masks.safetensors", "hf_px.json", "README.md"} <= kept
    assert not any(name.startswith("resume/") or name.startswith(".") for name in kept)


def test_default_commit_message_and_public_repo(folder, recorded, offline):
    push_folder(str(folder), "me/tiny-px")
    assert recorded[0][2]["private"] is False
    assert recorded[1][2]["commit_message"] == "Upload magnitude checkpoint at 50% sparsity (hf-px)"


def test_incomplete_folder_is_refused_before_any_hub_call(folder, recorded, offline, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "hf_px.json").unlink()
    with pytest.raises(ModelError, match="hf_px.json"):
        push_folder(broken, "me/tiny-px")
    with pytest.raises(ConfigError, match="does not exist"):
        push_folder(tmp_path / "nowhere", "me/tiny-px")
    assert recorded == []


def test_offline_push_is_a_one_line_error_with_a_hint(folder, offline):
    with pytest.raises(HfPxError, match="HF_HUB_OFFLINE") as caught:
        push_folder(folder, "me/tiny-px", token="hf_secret_never_shown")
    assert "hf_secret_never_shown" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_give_the_login_hint(folder, offline, monkeypatch, status):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    http = _http_client()

    def refuse(self, repo_id, **kwargs):
        response = http.Response(status, request=http.Request("POST", "https://huggingface.co/api/repos/create"))
        raise HfHubHTTPError("refused", response=response)

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(hub.PushError, match="hf auth login.*HF_TOKEN"):
        push_folder(folder, "me/tiny-px", token="hf_secret_never_shown")


def test_network_down_gives_a_network_hint(folder, offline, monkeypatch):
    from huggingface_hub import HfApi

    http = _http_client()

    def down(self, repo_id, **kwargs):
        raise http.ConnectError("Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", down)
    with pytest.raises(hub.PushError, match="network"):
        push_folder(folder, "me/tiny-px")


def _hub_reachable() -> str | None:
    """None when a real push can run, else why not."""
    if not os.environ.get("HF_TOKEN"):
        return "HF_TOKEN is not set"
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        return "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as error:
        return f"huggingface.co is not reachable ({error})"
    return None


def test_real_push_to_the_hub(folder):
    reason = _hub_reachable()
    if reason:
        pytest.skip(f"real Hub push skipped: {reason}")
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = f"{api.whoami()['name']}/hf-px-test-{uuid.uuid4().hex[:8]}"
    try:
        url = push_folder(folder, repo_id, private=True)
        assert repo_id in url
        files = set(api.list_repo_files(repo_id))
        assert {"model.safetensors", "hf_px_masks.safetensors", "hf_px.json", "README.md"} <= files
        assert not any(name.startswith(("resume/", ".")) for name in files)
        model, masks = hf_px.checkpoint.load_sparse(repo_id)
        assert masks
    finally:
        api.delete_repo(repo_id, missing_ok=True)


# ------------------------------------------------------------- issue 13: fail fast without a network, check before work


@pytest.fixture
def online_without_network(monkeypatch):
    """Offline mode off, no proxy, and every connection refused as DNS would refuse it; counts the attempts."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for name in hub._PROXIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_PROBED", {})
    attempts = []

    def no_dns(address, *args, **kwargs):
        attempts.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_dns)
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    return attempts


def test_no_network_fails_at_once_with_the_offline_hint(online_without_network, monkeypatch):
    import huggingface_hub

    from hf_px.models import load_model

    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: pytest.fail("a Hub request was made (and would retry for half a minute)"))
    for _ in range(2):
        with pytest.raises(hf_px.HubError, match="cannot reach the Hugging Face Hub .*set HF_HUB_OFFLINE=1") as info:
            load_model("some-org/some-model")
        assert isinstance(info.value, OSError) and "\n" not in str(info.value)
    with pytest.raises(hf_px.HubError, match="HF_HUB_OFFLINE=1"):
        hf_px.load_sparse("some-org/some-checkpoint")
    from hf_px.data import open_split, resolve_task

    with pytest.raises(hf_px.HubError, match="load dataset 'uoft-cs/cifar10'"):
        open_split(resolve_task("cifar10"), "train")
    assert online_without_network == [("huggingface.co", 443)]      # probed once per process


def test_offline_mode_and_proxies_skip_the_probe(offline, monkeypatch):
    monkeypatch.setattr(hub, "_PROBED", {})
    hub.require_hub("fetch x")          # offline: the libraries answer from the cache, no probe (no connection)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    hub.require_hub("fetch x")          # behind a proxy a direct connection proves nothing: not tried
    assert hub._PROBED == {}


def test_push_access_is_checked_before_any_work(online_without_network, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setattr(hub, "require_hub", lambda what: None)     # the Hub answers (recorded below)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_never_shown")
    me = {"name": "me", "orgs": [{"name": "team", "roleInOrg": "write"}, {"name": "readers", "roleInOrg": "read"}],
          "auth": {"accessToken": {"role": "write"}}}
    monkeypatch.setattr(HfApi, "whoami", lambda self, *a, **k: me)
    hub.check_push_access("me/x")
    hub.check_push_access("team/x")
    with pytest.raises(hf_px.HubError, match="'me' is not a member of 'other'.*me, team, readers"):
        hub.check_push_access("other/x")
    with pytest.raises(hf_px.HubError, match="read-only"):
        hub.check_push_access("readers/x")
    me["auth"]["accessToken"]["role"] = "read"
    with pytest.raises(hf_px.HubError, match="read-only") as info:
        hub.check_push_access("me/x")
    assert "hf_secret_never_shown" not in str(info.value)
    with pytest.raises(ConfigError, match="not a valid Hub repo id"):
        hub.check_push_access("not a repo")
    monkeypatch.delenv("HF_TOKEN")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(hf_px.HubError, match="no Hugging Face token found.*hf auth login"):
        hub.check_push_access("me/x")
