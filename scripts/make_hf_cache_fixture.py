#!/usr/bin/env python3
"""Build tests/fixtures/hf-cache: a Hugging Face cache folder laid out by the real Python
`huggingface_hub`, downloading from the local graft-hub-server (no internet needed).

Usage (from the repository root, with a Python that has huggingface_hub installed):

    cargo build -p graft-hub-server
    /work/pyenv/venv/bin/python scripts/make_hf_cache_fixture.py \
        [--server target/debug/graft-hub-server] [--root tests/fixtures/hub-repos] \
        [--out tests/fixtures/hf-cache]

The output folder is wiped first. Runtime artifacts (`.locks`) are removed afterwards and a
`manifest.json` describing every downloaded file is written next to the cache.
Everything in the output is deterministic: commit ids are derived by the server from the
file contents, and blob names are the files' ETags (git sha1 or LFS sha256).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

REPO_ID = "graft-test/tiny-adapter"

# (revision, path) pairs to download; revision None means the default ("main").
DOWNLOADS = [
    (None, "adapter_config.json"),
    (None, "adapter_model.safetensors"),
    (None, "sub/notes.json"),
    ("dev", "notes.json"),
    # A tag: huggingface_hub records it as refs/v1.0 pointing at main's commit.
    ("v1.0", "adapter_config.json"),
]
# Files that do not exist: huggingface_hub writes a `.no_exist/<commit>/<path>` marker.
MISSING = [(None, "missing.json")]


def start_server(server, root):
    """Starts graft-hub-server on ephemeral ports; returns (process, hub endpoint, cdn origin)."""
    proc = subprocess.Popen(
        [server, "--root", root],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    line_box = []
    reader = threading.Thread(target=lambda: line_box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=30)
    line = line_box[0].strip() if line_box else ""
    # "graft-hub-server: http://127.0.0.1:P cdn http://127.0.0.1:Q"
    parts = line.split()
    if len(parts) != 4 or parts[0] != "graft-hub-server:" or parts[2] != "cdn":
        proc.kill()
        proc.wait()
        sys.exit(f"unexpected server output: {line!r}")
    return proc, parts[1], parts[3]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def download_all(endpoint, out, hf_home):
    # huggingface_hub reads its configuration at import time, so the environment must be
    # complete before the (lazy) import below.
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
                "HUGGINGFACE_HUB_CACHE", "HF_HOME", "TRANSFORMERS_CACHE"):
        os.environ.pop(var, None)
    os.environ.update({
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": out,
        # A throwaway HF_HOME: no stored token is sent and nothing else is written outside `out`.
        "HF_HOME": hf_home,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    })
    if "huggingface_hub" in sys.modules:
        sys.exit("huggingface_hub was imported before the environment was set")
    import huggingface_hub
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    print(f"huggingface_hub {huggingface_hub.__version__} -> {endpoint}")
    results = []
    for revision, filename in DOWNLOADS:
        local = hf_hub_download(REPO_ID, filename, revision=revision)
        results.append((revision or "main", filename, local))
        print(f"  downloaded {filename}@{revision or 'main'} -> {local}")
    for revision, filename in MISSING:
        try:
            hf_hub_download(REPO_ID, filename, revision=revision)
        except EntryNotFoundError as e:
            print(f"  {filename}@{revision or 'main'}: EntryNotFoundError as expected "
                  f"({str(e).splitlines()[0]})")
        else:
            sys.exit(f"{filename} unexpectedly downloaded")
    return huggingface_hub.__version__, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="target/debug/graft-hub-server")
    ap.add_argument("--root", default="tests/fixtures/hub-repos")
    ap.add_argument("--out", default="tests/fixtures/hf-cache")
    args = ap.parse_args()

    out = os.path.abspath(args.out)
    readme = os.path.join(out, "README.md")
    kept_readme = open(readme, encoding="utf-8").read() if os.path.exists(readme) else None
    shutil.rmtree(out, ignore_errors=True)
    # The cache itself is a subfolder, so that manifest.json and README.md are not inside it
    # (huggingface_hub's scan_cache_dir would report them as stray repos).
    cache = os.path.join(out, "hub")
    os.makedirs(cache)

    proc, endpoint, cdn = start_server(args.server, args.root)
    print(f"server: {endpoint} (cdn {cdn})")
    try:
        with tempfile.TemporaryDirectory(prefix="graft-hf-home-") as hf_home:
            version, results = download_all(endpoint, cache, hf_home)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # Lock files are runtime artifacts of huggingface_hub, not part of the cache's layout.
    shutil.rmtree(os.path.join(cache, ".locks"), ignore_errors=True)

    repo_folder = "models--" + REPO_ID.replace("/", "--")
    repo_dir = os.path.join(cache, repo_folder)
    refs = {}
    refs_dir = os.path.join(repo_dir, "refs")
    for dirpath, _, files in os.walk(refs_dir):
        for name in files:
            p = os.path.join(dirpath, name)
            refs[os.path.relpath(p, refs_dir)] = open(p, encoding="utf-8").read()
    no_exist = []
    ne_dir = os.path.join(repo_dir, ".no_exist")
    for dirpath, _, files in os.walk(ne_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), ne_dir)
            commit, path = rel.split(os.sep, 1)
            no_exist.append({"commit": commit, "path": path.replace(os.sep, "/")})

    files = []
    for revision, filename, local in results:
        rel = os.path.relpath(local, cache)
        # <repo_folder>/snapshots/<commit>/<filename>
        commit = rel.split(os.sep)[2]
        link = os.readlink(local)
        files.append({
            "repo": REPO_ID,
            "revision": revision,
            "path": filename,
            "commit": commit,
            "snapshot_path": rel.replace(os.sep, "/"),
            "symlink_target": link,
            "blob": os.path.basename(link),
            "sha256": sha256_file(local),
            "size": os.path.getsize(local),
        })
    manifest = {
        "generator": "scripts/make_hf_cache_fixture.py",
        "huggingface_hub": version,
        "repo_folder": repo_folder,
        "refs": dict(sorted(refs.items())),
        "files": files,
        "no_exist": sorted(no_exist, key=lambda e: (e["commit"], e["path"])),
    }
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    if kept_readme is not None:
        with open(readme, "w", encoding="utf-8") as f:
            f.write(kept_readme)

    print(f"\nwrote {os.path.relpath(out)}:")
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, out)
            if os.path.islink(p):
                print(f"  {rel} -> {os.readlink(p)}")
            else:
                print(f"  {rel} ({os.path.getsize(p)} bytes)")
    print("refs:", json.dumps(manifest["refs"]))


if __name__ == "__main__":
    main()
