"""Upload an exported folder to the Hugging Face Hub as a dataset repository."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError

_D5 = "[0-9]" * 5  # a shard number in a file name pattern


def push_to_hub(folder: Path, repo: str, *, private: bool = False, revision: str | None = None) -> str:
    """Upload an exported folder as a dataset repo (token from HF_TOKEN or `hf auth login`);
    returns the commit URL.

    Without `private` the repo is created with the Hub's default visibility (an organization
    may make new repos private by default). The commit replaces the shards of the folder's
    split(s) already in the repo, so a smaller re-export leaves no stale shard behind."""
    try:
        from huggingface_hub import HfApi
    except ImportError:  # pragma: no cover - a dependency of datasets
        raise UsageError("--push-to-hub needs huggingface_hub (pip install huggingface_hub)") from None
    splits = sorted({p.name.rsplit("-", 3)[0] for p in (folder / "data").glob("*-of-*.parquet")})
    api = HfApi()
    api.create_repo(repo, repo_type="dataset", private=True if private else None, exist_ok=True)
    if revision:
        api.create_branch(repo, branch=revision, repo_type="dataset", exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo,
        repo_type="dataset",
        revision=revision,
        commit_message="gemma4u export",
        delete_patterns=[f"data/{split}-{_D5}-of-{_D5}.parquet" for split in splits],
    )
    return str(getattr(info, "commit_url", info))
