#!/usr/bin/env python3
"""A git server's push webhook, for a bare repository on this machine: installed as its
`hooks/post-receive`, it does what GitHub, Gitea or GitLab do after a push — builds the push event
(ref, before/after, commits with their added/modified/removed files), signs it with the webhook's
secret and POSTs it to the URL.

    git -C REPO.git config slipway.webhook-url    http://127.0.0.1:7000/webhooks/<service id>
    git -C REPO.git config slipway.webhook-secret <secret from `slipway webhook create`>
    git -C REPO.git config slipway.webhook-provider github   # or gitea, gitlab (default github)
    python3 scripts/git-webhook-hook.py --install REPO.git

Reads "<old> <new> <ref>" lines on stdin (git's post-receive protocol). What the gateway answered
is printed, so `git push` shows it as "remote: ..." lines.
"""
import hashlib
import hmac
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

ZERO = "0" * 40


def git(*args):
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def config(name, default=None):
    try:
        return git("config", "--get", name).strip()
    except subprocess.CalledProcessError:
        return default


def commits(old, new):
    """The pushed commits, oldest first, with the files each added, modified and removed."""
    span = new if old == ZERO else f"{old}..{new}"
    result = []
    for sha in git("rev-list", "--reverse", span).split():
        changes = {"A": [], "M": [], "D": []}
        for line in git("diff-tree", "--no-commit-id", "--root", "-r", "--name-status", sha).splitlines():
            status, _, path = line.partition("\t")
            changes.setdefault(status[:1], []).append(path)
        message = git("log", "-1", "--format=%B", sha).strip()
        result.append({"id": sha, "message": message, "added": changes["A"], "modified": changes["M"] + changes.get("R", []), "removed": changes["D"]})
    return result


def deliver(old, new, ref):
    url, secret = config("slipway.webhook-url"), config("slipway.webhook-secret", "")
    provider = config("slipway.webhook-provider", "github")
    if not url:
        print("slipway: no slipway.webhook-url configured; not delivering")
        return 0
    pushed = [] if new == ZERO else commits(old, new)
    name = os.path.basename(os.path.abspath(os.getcwd()))
    event = {
        "ref": ref, "before": old, "after": new, "created": old == ZERO, "deleted": new == ZERO,
        "commits": pushed, "head_commit": pushed[-1] if pushed else None,
        "repository": {"name": name, "full_name": f"local/{name}", "clone_url": os.path.abspath(os.getcwd())},
    }
    if provider == "gitlab":
        event["checkout_sha"] = None if new == ZERO else new
    body = json.dumps(event).encode()
    delivery = str(uuid.uuid4())
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "User-Agent": "slipway-git-hook"}
    if provider == "gitea":
        headers.update({"X-Gitea-Event": "push", "X-Gitea-Delivery": delivery, "X-Gitea-Signature": signature})
    elif provider == "gitlab":
        headers.update({"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": delivery, "X-Gitlab-Token": secret})
    else:
        headers.update({"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": "sha256=" + signature})
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, answer = error.code, error.read().decode()
    except OSError as error:
        print(f"slipway: webhook delivery to {url} failed: {error}")
        return 1
    print(f"slipway: {ref} {new[:12]} -> HTTP {status} {answer.strip()}")
    return 0 if status < 300 else 1


def install(repository):
    hook = os.path.join(repository, "hooks", "post-receive")
    with open(hook, "w") as f:
        f.write(f"#!/bin/sh\nexec python3 {os.path.abspath(__file__)} \"$@\"\n")
    os.chmod(hook, 0o755)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--install":
        install(sys.argv[2])
        sys.exit(0)
    failed = 0
    for line in sys.stdin:
        old, new, ref = line.split()
        failed |= deliver(old, new, ref)
    sys.exit(failed)
