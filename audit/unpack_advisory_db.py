#!/usr/bin/env python3
"""Unpacks the RustSec advisory-db snapshot into the git repository `cargo deny --offline` reads.

These machines cannot reach github.com/rustsec/advisory-db. The snapshot (a tarball of the
repository's files, without .git) becomes a one-commit git repository at
<db-path>/advisory-db-3157b0e258782691, the directory cargo-deny 0.20 derives from the default
database URL. The commit is dated with the newest file of the snapshot: cargo-deny reads the HEAD
commit's date as the database's date. Unpacked again only when the snapshot changes.

    unpack_advisory_db.py SNAPSHOT.tar.gz DB_PATH
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile

# cargo-deny 0.20's directory name for https://github.com/rustsec/advisory-db.
DB_DIRECTORY = "advisory-db-3157b0e258782691"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    snapshot, db_path = sys.argv[1], sys.argv[2]
    if not os.path.isfile(snapshot):
        sys.exit(
            f"audit: the advisory-db snapshot {snapshot} is missing: it is the RustSec "
            "advisory-db as a .tar.gz, expected at ../shared/advisory-db.tar.gz next to the "
            "repository (or set ADVISORY_DB_SNAPSHOT=/path/to/advisory-db.tar.gz)"
        )
    with open(snapshot, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    target = os.path.join(db_path, DB_DIRECTORY)
    stamp = os.path.join(db_path, "snapshot.sha256")
    if os.path.isdir(os.path.join(target, ".git")) and os.path.isfile(stamp):
        with open(stamp) as f:
            if f.read().strip() == digest:
                print(f"audit: advisory-db {target} is up to date")
                return
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.makedirs(target)
    with tarfile.open(snapshot, "r:gz") as tar:
        members = tar.getmembers()
        if not any(m.name.startswith("crates/") for m in members):
            sys.exit(f"audit: {snapshot} does not look like the advisory-db (no crates/)")
        newest = max(m.mtime for m in members)
        tar.extractall(target, filter="data")
    date = f"@{newest} +0000"
    env = dict(os.environ, GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date,
               GIT_AUTHOR_NAME="advisory-db snapshot", GIT_AUTHOR_EMAIL="snapshot@localhost",
               GIT_COMMITTER_NAME="advisory-db snapshot", GIT_COMMITTER_EMAIL="snapshot@localhost")
    git = ["git", "-C", target, "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", f"snapshot {digest}"]):
        subprocess.run(git + command, check=True, env=env)
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    print(f"audit: advisory-db snapshot unpacked into {target}")


if __name__ == "__main__":
    main()
