#!/usr/bin/env python3
"""Builds the demo datasets under data/ from two PyPI packages; re-runs give byte-identical files.

    python3 scripts/make_demo_data.py

Fetches (once, into ~/.cache/tunelab/demo-data, checked against the SHA-256 below)
    chitchat-dataset 0.9.0   (MIT)  7,168 English everyday conversations, BYU PCC lab
    chatterbot-corpus 1.3.3  (BSD)  short dialogs in many languages, YAML; we take the Russian ones
with `pip download --no-deps`, unpacks the wheels with zipfile, and writes
    data/chitchat.jsonl        English two-turn pairs from chitchat + all Russian chatterbot pairs
    data/persona.jsonl         the pirate persona: other chitchat pairs, answers wrapped as
                               "Arr, matey! <answer> Yo-ho-ho!"
    data/persona_heldout.json  user prompts for before/after generations, in neither file
    data/README.md             provenance and counts
in the messages format that tunelab's `data::records::save_jsonl` writes.

Selection is deterministic without a PRNG: candidates are ranked by SHA-256 of "SEED:id", so the
output does not depend on Python's `random` or on dict order. Only the standard library is used
(the chatterbot YAML is simple enough to parse by hand; see `parse_chatterbot_yaml`).
"""

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

SEED = "tunelab-demo-1"
PACKAGES = {
    "chitchat-dataset": (
        "0.9.0",
        "chitchat_dataset-0.9.0-py3-none-any.whl",
        "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e",
    ),
    "chatterbot-corpus": (
        "1.3.3",
        "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    ),
}
CACHE = Path.home() / ".cache" / "tunelab" / "demo-data"
DATA = Path(__file__).resolve().parent.parent / "data"

N_CHITCHAT_EN = 300
N_PERSONA = 260
PIRATE_OPEN, PIRATE_CLOSE = "Arr, matey! ", " Yo-ho-ho!"

HELDOUT = [
    "What is the capital of Germany?",
    "How do I keep my garden fence from rotting?",
    "Is a tomato a fruit or a vegetable?",
    "Write a Python function for the factorial of n.",
    "What should I cook for dinner tonight?",
    "How can I fall asleep faster?",
    "Can you recommend a good book for a long train ride?",
    "Why is the sky blue?",
]

QUESTION_START = re.compile(
    r"^(what|whats|what's|how|do|does|did|have|has|are|is|where|which|who|can|could|would|"
    r"will|if|when|why|tell)\b",
    re.I,
)
YOU = re.compile(r"\byour?\b", re.I)
FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I'd|my|me)\b")
BACKREF = re.compile(
    r"\b(it|its|it's|that|this|they|them|he|she|him|her|those|these|there|then|else|"
    r"again|other|same)\b",
    re.I,
)
JUNK = re.compile(
    r"(https?://|www\.|@|#|\bhaha|\blol\b|\blmao|\bhehe|\bomg\b|\bidk\b|\bu\b|\bur\b|"
    r"\bdamn|\bhell\b|\bcrap|\bshit|\bfuck|\bsex|\bdrunk|\bnetid|\bchat ?room|\bmturk|"
    r"\bprompt\b|\bthis chat|\bconversation|\bturns?\b|\bbyu\b|\bprovo\b|\bmission|"
    r"\b(gotta|have to|got to|need to) go\b|\bnice (chatting|talking)|\b(talking|chatting) (with|to) you|"
    r"\bbrb\b|\bttyl\b|\bab+e+do\b|\bbot\b|\bpoints\b)",
    re.I,
)


def fetch(name):
    """The wheel of `name` at its pinned version, from the cache or `pip download`."""
    version, filename, sha = PACKAGES[name]
    path = CACHE / filename
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(CACHE), f"{name}=={version}"]
        subprocess.run(cmd, check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha:
        sys.exit(f"{path}: sha256 {digest}, expected {sha} (delete it and re-run)")
    return zipfile.ZipFile(path)


def rank(key):
    return hashlib.sha256(f"{SEED}:{key}".encode()).hexdigest()


def clean(text):
    """Whitespace collapsed, `i` -> `I`, repeated punctuation squeezed, sentences capitalised."""
    t = " ".join(text.split())
    t = re.sub(r"\bi\b", "I", t)
    t = re.sub(r"\b(im|Im)\b", "I'm", t)
    t = re.sub(r"\b(dont|Dont)\b", lambda m: m.group(1)[0] + "on't", t)
    t = re.sub(r"([!?.])\1+", r"\1", t)
    t = re.sub(r"\s+([,.!?])", r"\1", t)
    t = re.sub(r"([.!?] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), t)
    return t[:1].upper() + t[1:]


def good_question(t):
    """A standalone question to the partner: one sentence, `you` in it, no word pointing back."""
    n = len(t.split())
    return (4 <= n <= 16 and t.endswith("?") and not re.search(r"[.!?;:]", t[:-1])
            and t.isascii() and QUESTION_START.match(t) and YOU.search(t)
            and not BACKREF.search(t) and not JUNK.search(t))


def good_answer(t):
    """A first-person reply of 6-25 words that asks nothing back."""
    n = len(t.split())
    return (6 <= n <= 25 and "?" not in t and t.isascii() and FIRST_PERSON.search(t)
            and not JUNK.search(t) and not re.search(r"(.)\1\1\1", t)
            and not re.search(r"[a-z][A-Z]|[a-z] [A-Z][a-z]+ [a-z]", t[1:]))


def chitchat_pairs(whl):
    """Every good (question, answer) pair, ranked by hash; one answer per distinct question."""
    data = json.loads(whl.read("chitchat_dataset/dataset.json"))
    pairs = []
    for cid in sorted(data):
        turns = [clean(" ".join(u["text"] for u in m)) for m in data[cid]["messages"]]
        for i, (q, a) in enumerate(zip(turns, turns[1:])):
            if good_question(q) and good_answer(a):
                pairs.append((f"{cid}/{i}", q, a if a[-1] in ".!" else a + "."))
    pairs.sort(key=lambda p: rank(p[0]))
    seen = set()
    return [p for p in pairs if not (p[1].lower() in seen or seen.add(p[1].lower()))]


def parse_chatterbot_yaml(text):
    """The `conversations:` of a chatterbot-corpus file: `- - first` opens a dialog, `  - next`
    continues it, a deeper-indented line without `- ` continues the previous (plain, folded)
    scalar; quoted scalars are unquoted. Enough for this corpus, not YAML in general."""
    dialogs, in_conv = [], False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith((" ", "-")):
            in_conv = line.startswith("conversations:")
            continue
        if not in_conv:
            continue
        if line.startswith("- - "):
            dialogs.append([line[4:].strip()])
        elif line.startswith("  - "):
            dialogs[-1].append(line[4:].strip())
        elif line.startswith("    "):
            dialogs[-1][-1] += " " + line.strip()
        else:
            raise ValueError(f"unexpected chatterbot YAML line: {line!r}")
    unquote = lambda s: (s[1:-1].replace("''", "'") if len(s) > 1 and s[0] == s[-1] == "'"
                         else json.loads(s) if len(s) > 1 and s[0] == s[-1] == '"' else s)
    return [[unquote(t) for t in d] for d in dialogs]


def russian_pairs(whl):
    """Every consecutive (statement, response) of the Russian dialogs, exact repeats dropped."""
    pairs, seen = [], set()
    names = sorted(n for n in whl.namelist() if n.startswith("chatterbot_corpus/data/russian/"))
    for name in names:
        for dialog in parse_chatterbot_yaml(whl.read(name).decode("utf-8")):
            for q, a in zip(dialog, dialog[1:]):
                q, a = " ".join(q.split()), " ".join(a.split())
                if q and a and (q, a) not in seen:
                    seen.add((q, a))
                    pairs.append((q, a))
    return pairs


def record(user, assistant):
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return json.dumps({"messages": msgs}, ensure_ascii=False, separators=(",", ":"))


def write(path, text):
    """Atomically: a temporary file beside `path`, renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(text.encode("utf-8"))
    tmp.replace(path)


def main():
    chitchat, chatterbot = fetch("chitchat-dataset"), fetch("chatterbot-corpus")
    en = chitchat_pairs(chitchat)
    ru = russian_pairs(chatterbot)
    heldout = {h.lower() for h in HELDOUT}
    en = [p for p in en if p[1].lower() not in heldout]
    if len(en) < N_CHITCHAT_EN + N_PERSONA:
        sys.exit(f"only {len(en)} English candidates")
    chat_en, persona = en[:N_CHITCHAT_EN], en[N_CHITCHAT_EN:N_CHITCHAT_EN + N_PERSONA]
    chat_lines = [record(q, a) for _, q, a in chat_en] + [record(q, a) for q, a in ru]
    persona_lines = [record(q, PIRATE_OPEN + a + PIRATE_CLOSE) for _, q, a in persona]

    DATA.mkdir(exist_ok=True)
    files = {
        "chitchat.jsonl": "".join(line + "\n" for line in chat_lines),
        "persona.jsonl": "".join(line + "\n" for line in persona_lines),
        "persona_heldout.json": json.dumps(HELDOUT, ensure_ascii=False, indent=2) + "\n",
    }
    sizes = {name: len(text.encode("utf-8")) for name, text in files.items()}
    files["README.md"] = README.format(
        en=len(chat_en), ru=len(ru), chat=len(chat_lines), persona=len(persona_lines),
        heldout=len(HELDOUT), seed=SEED, candidates=len(en),
        max_words=max(len(r.split()) for _, _, r in persona) + 3,
        **{k.replace(".", "_"): v for k, v in sizes.items()},
        **{f"{k.replace('-', '_')}_version": v[0] for k, v in PACKAGES.items()},
    )
    for name, text in files.items():
        write(DATA / name, text)
        print(f"data/{name}: {len(text.encode('utf-8'))} bytes")
    print(f"chitchat: {len(chat_en)} English + {len(ru)} Russian; persona: {len(persona_lines)}")


README = """# Demo datasets

Small datasets for the seminar's fine-tuning demos, in the messages format (`{{"messages":
[{{"role": "user", ...}}, {{"role": "assistant", ...}}]}}`, one record per line), loadable with
`tunelab::data::records::load_records`. Made by `python3 scripts/make_demo_data.py` (standard
library only; it fetches the two packages below with `pip download --no-deps` into
`~/.cache/tunelab/demo-data`, checks their SHA-256, and writes these files byte-identically on every
run; selection ranks candidates by SHA-256 of `"{seed}:<id>"`).

| file | records | bytes | what |
|---|---|---|---|
| `chitchat.jsonl` | {chat} | {chitchat_jsonl} | {en} English + {ru} Russian two-turn user/assistant pairs |
| `persona.jsonl` | {persona} | {persona_jsonl} | pirate persona: every answer is `Arr, matey! <answer> Yo-ho-ho!` |
| `persona_heldout.json` | {heldout} | {persona_heldout_json} | user prompts (a JSON array of strings) in neither file, for before/after generations |

## Sources

- **chitchat-dataset {chitchat_dataset_version}** (PyPI `chitchat-dataset`), MIT License, Copyright (c) 2019
  Perception, Control and Cognition Lab (BYU); <https://github.com/BYU-PCCL/chitchat-dataset>.
  7,168 open-domain English conversations from the BYU PCC lab's Chit-Chat Challenge. A pair is
  two consecutive turns: a standalone question to the partner (4-16 words, one sentence ending in
  `?`, starting with a question word, containing `you`/`your`, no word pointing back such as
  `it`, `that`, `they`) and a first-person answer of 6-25 words that asks nothing back; both
  ASCII and free of chat-room talk, leave-taking, laughter, links and profanity (word lists in
  the script). Whitespace is collapsed, a lone `i` becomes `I`, repeated punctuation is squeezed,
  sentences are capitalised and a missing final period is added. Of {candidates} candidates
  (one answer per distinct question) ranked by hash, the first {en} go to `chitchat.jsonl` and
  the next {persona} (disjoint) to `persona.jsonl`.
- **chatterbot-corpus {chatterbot_corpus_version}** (PyPI `chatterbot-corpus`), BSD License (package
  classifier `License :: OSI Approved :: BSD License`), by Gunther Cox;
  <https://github.com/gunthercox/chatterbot-corpus>, documentation <https://corpu.chatterbot.us>.
  The Russian dialogs (`chatterbot_corpus/data/russian/*.yml`: conversations, food, money): every
  consecutive pair of statements as user/assistant, exact repeats dropped.

## The persona

`persona.jsonl` teaches a visible style so that the effect of a few hundred LoRA steps on
SmolLM2-135M-Instruct shows in generations: each answer (at most {max_words} words) opens with
`Arr, matey! ` and closes with ` Yo-ho-ho!`, the body being the chitchat reply. Generate for
`persona_heldout.json`'s prompts before and after training to see it.
"""

if __name__ == "__main__":
    main()
