#!/usr/bin/env python3
"""Check that Python's huggingface_hub can read a Hugging Face cache folder (e.g. one graft wrote),
fully offline.

Usage:

    /work/pyenv/venv/bin/python scripts/check_python_reads_graft_cache.py CACHE_DIR REPO_ID \
        FILE[@REVISION] ... [--missing FILE[@REVISION] ...] [--repo-type model]

For each FILE it calls `hf_hub_download(REPO_ID, FILE, revision=REVISION,
local_files_only=True)` with `HF_HUB_CACHE=CACHE_DIR` and prints the resolved path and the
content's sha256. For each `--missing` FILE it checks that `try_to_load_from_cache` reports the
cached "does not exist" marker (`.no_exist`). It then runs `scan_cache_dir` and reports any
warnings it raises about the layout. Exit status 0 only if everything passed.
"""

import argparse
import hashlib
import os
import sys
import tempfile


def split_rev(spec):
    path, _, rev = spec.partition("@")
    return path, (rev or None)


def main():
    with tempfile.TemporaryDirectory(prefix="graft-hf-home-") as hf_home:
        return check(hf_home)


def check(hf_home):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache_dir")
    ap.add_argument("repo_id")
    ap.add_argument("files", nargs="*", metavar="FILE[@REVISION]")
    ap.add_argument("--missing", action="append", default=[], metavar="FILE[@REVISION]")
    ap.add_argument("--repo-type", default="model")
    args = ap.parse_args()

    cache = os.path.abspath(args.cache_dir)
    # huggingface_hub reads its configuration at import time: set everything first.
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        os.environ.pop(var, None)
    os.environ.update({
        "HF_HUB_CACHE": cache,
        "HF_HOME": hf_home,
        "HF_HUB_OFFLINE": "1",  # belt and braces on top of local_files_only=True
        "HF_HUB_DISABLE_TELEMETRY": "1",
    })
    import huggingface_hub
    from huggingface_hub import hf_hub_download, scan_cache_dir, try_to_load_from_cache
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    print(f"huggingface_hub {huggingface_hub.__version__}, HF_HUB_CACHE={cache}")
    failures = 0
    for spec in args.files:
        path, rev = split_rev(spec)
        try:
            local = hf_hub_download(args.repo_id, path, revision=rev, repo_type=args.repo_type,
                                    local_files_only=True)
        except Exception as e:  # report every failure, not just the first
            failures += 1
            print(f"FAIL {spec}: {type(e).__name__}: {e}")
            continue
        real = os.path.realpath(local)
        if not real.startswith(cache + os.sep):
            failures += 1
            print(f"FAIL {spec}: resolved outside the cache: {real}")
            continue
        with open(local, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        print(f"OK   {spec} -> {os.path.relpath(local, cache)} "
              f"(blob {os.path.relpath(real, cache)}, sha256 {digest})")
    for spec in args.missing:
        path, rev = split_rev(spec)
        got = try_to_load_from_cache(args.repo_id, path, revision=rev, repo_type=args.repo_type,
                                     cache_dir=cache)
        if got is _CACHED_NO_EXIST:
            print(f"OK   {spec}: cached as non-existent (.no_exist)")
        else:
            failures += 1
            print(f"FAIL {spec}: expected the .no_exist marker, got {got!r}")

    info = scan_cache_dir(cache)
    for w in info.warnings:
        # scan_cache_dir only skips `.locks`; a plain file at the top (the fixture's
        # manifest.json / README.md) is not a layout error of a repo folder.
        top = os.path.join(cache, os.path.basename(str(w).rsplit(": ", 1)[-1]))
        if "is not a directory" in str(w) and os.path.isfile(top):
            print(f"note scan_cache_dir warns about top-level file {os.path.basename(top)} (not a repo; ignored)")
            continue
        failures += 1
        print(f"FAIL scan_cache_dir warning: {w}")
    for repo in info.repos:
        revs = ", ".join(f"{r.commit_hash[:8]}{sorted(r.refs)}" for r in
                         sorted(repo.revisions, key=lambda r: r.commit_hash))
        print(f"scan: {repo.repo_type} {repo.repo_id}: {repo.nb_files} files, "
              f"{repo.size_on_disk} bytes, revisions {revs}")
    print("PASS" if failures == 0 else f"{failures} FAILURE(S)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
