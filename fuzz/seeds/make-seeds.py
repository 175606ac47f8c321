#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/ from the real fixtures and examples.

Webhook seeds are the recorded payloads of tests/fixtures/webhooks/, cut down to the fields draftd
reads (plus the keys the intake looks projects up by), so each stays a few KB; variants change the
fields that steer normalisation (branch, action, labels, comment text). Re-run after fixtures change:
    python3 fuzz/seeds/make-seeds.py
Input layout of the webhook targets: byte 0 selects the event (low 3 bits, see EVENTS in the target)
and the project variant (upper bits); the rest is the body.
"""
import copy
import json
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests/fixtures/webhooks"
SEEDS = ROOT / "fuzz/seeds"

KEEP = {
    # GitHub
    "action", "number", "pull_request", "state", "draft", "merged", "updated_at", "head", "base", "ref",
    "sha", "repo", "full_name", "labels", "label", "name", "issue", "comment", "body", "user", "login", "id",
    "check_run", "head_sha", "pull_requests", "requested_action", "identifier", "sender", "repository",
    "zen", "hook_id", "before", "after",
    # GitLab
    "object_kind", "object_attributes", "iid", "source_branch", "source_project_id", "target_project_id",
    "last_commit", "work_in_progress", "oldrev", "changes", "previous", "current", "title", "merge_request",
    "note", "noteable_type", "project", "path_with_namespace", "username",
}


def prune(v):
    if isinstance(v, dict):
        return {k: prune(x) for k, x in v.items() if k in KEEP}
    if isinstance(v, list):
        return [prune(x) for x in v[:3]]
    return v


def load(name):
    return prune(json.loads((FIX / name).read_text()))


def write(target, name, selector, payload):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    (d / name).write_bytes(bytes([selector]) + body)


# Selector: event index | variant << 3. Variant 4 = any branch (`**`); 0 = default globs; 1 = forks allowed.
ANY = 4 << 3


def github():
    events = {"pull_request": 0, "issue_comment": 1, "check_run": 2, "ping": 3, "push": 4}
    for f in sorted((FIX / "github").glob("*.json")):
        event = f.name.split(".")[0]
        write("github_webhook", f.stem, events[event] | ANY, load("github/" + f.name))
    pr = load("github/pull_request.opened.json")
    pr["pull_request"]["head"]["ref"] = "feature/login"
    write("github_webhook", "pr.opened.feature", 0, pr)
    sha256 = copy.deepcopy(pr)
    sha256["pull_request"]["head"]["sha"] = "AB" * 32
    write("github_webhook", "pr.opened.sha256", 0, sha256)
    lab = load("github/pull_request.labeled.json")
    lab["pull_request"]["head"]["ref"] = "bugfix/x"
    lab["label"] = {"name": "draft:skip"}
    write("github_webhook", "pr.labeled.optout", 0, lab)
    c = load("github/issue_comment.created.json")
    for i, text in enumerate(["/draft rerun", "/draft extend 36h", "\n  /draft destroy\nthanks", "/draft extend 1year2months"]):
        c["comment"]["body"] = text
        write("github_webhook", f"comment.draft.{i}", 1 | ANY, c)
    cr = load("github/check_run.requested_action.json")
    cr["check_run"]["name"] = "draftd"
    cr["requested_action"] = {"identifier": "rerun"}
    write("github_webhook", "check_run.draftd", 2 | ANY, cr)
    write("github_webhook", "custom_event", 7, b"deployment_status\n{}")


def gitlab():
    events = {"merge_request": 0, "note": 1, "push": 2}
    for f in sorted((FIX / "gitlab").glob("*.json")):
        event = f.name.split(".")[0]
        write("gitlab_webhook", f.stem, events[event] | ANY, load("gitlab/" + f.name))
    mr = load("gitlab/merge_request.update.json")
    mr["object_attributes"]["source_branch"] = "feature/login"
    mr["changes"] = {"labels": {"previous": [], "current": [{"title": "draft:skip"}]}}
    write("gitlab_webhook", "mr.update.optout", 0, mr)
    mr["changes"] = {"draft": {"previous": True, "current": False}}
    mr["object_attributes"]["oldrev"] = None
    write("gitlab_webhook", "mr.update.ready", 0, mr)
    n = load("gitlab/note.merge_request.json")
    n["merge_request"]["source_branch"] = "feature/x"
    for i, text in enumerate(["/draft rerun", "/draft extend 2d", "/draft destroy now"]):
        n["object_attributes"]["note"] = text
        write("gitlab_webhook", f"note.draft.{i}", 1, n)
    write("gitlab_webhook", "custom_event", 7, b"Job Hook\n{}")


def command():
    texts = [
        "/draft rerun", "/draft destroy", "/draft extend", "/draft extend 24h", "/draft extend 1h30m",
        "/draft EXTEND 2weeks", "\n  /draft destroy  \nthanks", "/draft", "/draft deploy", "/draft extend 0s",
        "/draft rerun now", "see /draft rerun", "/drafts rerun", "LGTM", "/draft extend 1year 2months",
    ]
    for i, t in enumerate(texts):
        d = SEEDS / "command"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"seed-{i:02}").write_text(t)


def duration():
    d = SEEDS / "duration"
    d.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(["48h", "24h", "1h", "20m", "7d", "2weeks", "1year 2months 3days", "90d", "500ms",
                           "0s", "1h 30m", "15days 2min 2s", "18446744073709551615s", "1ns"]):
        (d / f"seed-{i:02}").write_text(t)


def config():
    d = SEEDS / "config"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "examples/draftd.toml", d / "example")
    (d / "minimal").write_text(
        '[[projects]]\nname = "shop"\nforge = "github"\nrepo = "acme/shop"\nwebhook_secret_env = "S"\n')
    (d / "full").write_text("""listen = "127.0.0.1:8080"
database_url = "postgres://draftd@127.0.0.1/draftd"
public_url = "http://127.0.0.1:8080"
[api]
token_env = "DRAFTD_API_TOKEN"
[cluster]
mode = "kubernetes"
dry_run_dir = "stands"
[stands]
ttl = "48h"
max_concurrent_runs = 8
[postgres]
admin_url_env = "DRAFTD_STANDS_PG_URL"
[vault]
address = "http://127.0.0.1:8200"
auth = "token"
token_env = "VAULT_TOKEN"
kv_mount = "draft"
credential_ttl = "1h"
[github]
api_url = "https://api.github.com"
token_env = "GITHUB_TOKEN"
[gitlab]
url = "https://gitlab.com"
token_env = "GITLAB_TOKEN"
[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "SHOP_WEBHOOK_SECRET"
team = "payments"
service = "shop"
chart = "charts/stand"
values = ["values/draft.yaml"]
image = "registry.example.com/acme/shop"
host = "{stand}.draft.example.com"
branches = ["feature/**", "bugfix/**"]
forks = "deny"
migrate = ["alembic", "upgrade", "head"]
smoke = ["scripts/smoke_draft.sh"]
""")


def naming():
    # Arbitrary-derived input: raw bytes; a few shapes are enough for libFuzzer to start from.
    d = SEEDS / "naming"
    d.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(["shop", "feature/Login_Form", "bugfix/crash", "feature/" + "very-long-name-" * 10,
                           "ünïcødé/日本", "feature/café-crème"]):
        (d / f"seed-{i:02}").write_bytes(b"\x04shop" + bytes([len(b.encode()) & 0xFF]) + b.encode() + bytes(range(48)))


if __name__ == "__main__":
    for t in ["github_webhook", "gitlab_webhook", "command", "duration", "config", "naming"]:
        shutil.rmtree(SEEDS / t, ignore_errors=True)
    github(); gitlab(); command(); duration(); config(); naming()
    for t in sorted(p for p in SEEDS.iterdir() if p.is_dir()):
        files = list(t.iterdir())
        print(f"{t.name}: {len(files)} seeds, largest {max(f.stat().st_size for f in files)} bytes")
