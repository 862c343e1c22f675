#!/usr/bin/env python3
"""Compile every Rust snippet of the README and the guides as a user would paste it.

Doctests see this crate's dev-dependencies (tempfile, wiremock, tokio with every
feature), so a snippet can pass as a doctest and still fail in a user's app. This
builds each snippet instead as an example of a throwaway crate under
target/snippets/ that depends on portia by path and on exactly what the README's
Install section tells a user to `cargo add`, then runs `cargo check` on it.

Snippets are read the way rustdoc reads them (its book, "Documentation tests"):
- a fence's info string is split on commas and spaces; an empty one is Rust; a block
  with any word rustdoc does not know (sh, toml, json, text, console...) is not Rust,
  unless `rust` is among its words; `ignore` and `compile_fail` blocks are skipped;
  `no_run` and `should_panic` are compiled like the rest (nothing is run here);
- a line whose trimmed text starts with `# `, or is `#`, is compiled but hidden; `##`
  stands for `#`;
- `#![...]` crate attributes go to the top of the file, and `#![allow(unused)]` is
  added as rustdoc does;
- without a `fn main`, the code is wrapped in one: in `fn main() { ... }`, or, when
  it ends in `(())` (as `Ok::<(), E>(())` does), in
  `fn main() { fn _inner() -> Result<(), impl core::fmt::Debug> { ... } _inner().unwrap() }`.

A block that names `feature = "X"` (as `# #[cfg(feature = "mcp")]` does) is compiled
with the crate's feature X, which turns on portia/X, the way a user who follows that
guide's install line (`--features X`) gets it; the other blocks build without it.

Usage: check-snippets.py [repo root]. Exits 1 when a snippet does not compile,
printing the markdown file and line of each broken block and the compiler's errors.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

# Words of a fence's info string that rustdoc knows (LangString::parse); any other
# word makes the block not Rust unless `rust` is there too.
RUSTDOC_WORDS = {
    "rust", "no_run", "ignore", "should_panic", "test_harness", "compile_fail",
    "standalone_crate", "allow_fail",
}
SKIP_WORDS = {"ignore", "compile_fail"}


def lang_words(info):
    return [w for w in re.split(r"[,\s]+", info.strip()) if w]


def is_rust(words):
    if not words:
        return True
    known = all(
        w in RUSTDOC_WORDS
        or re.fullmatch(r"edition\d{4}", w)
        or re.fullmatch(r"E\d{4}", w)
        or w.startswith("ignore-")
        or w.startswith("{")
        for w in words
    )
    return known or "rust" in words


def fenced_blocks(path):
    """Yield (opening fence line number, info string, [(line number, text)]) per
    fenced block, following CommonMark's fence rules."""
    lines = path.read_text().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^( {0,3})(`{3,}|~{3,})(.*)$", lines[i])
        if not m or (m.group(2)[0] == "`" and "`" in m.group(3)):
            i += 1
            continue
        indent, fence, info = len(m.group(1)), m.group(2), m.group(3)
        start = i + 1
        body = []
        i += 1
        while i < len(lines):
            c = re.match(r"^ {0,3}(`{3,}|~{3,})\s*$", lines[i])
            if c and c.group(1)[0] == fence[0] and len(c.group(1)) >= len(fence):
                break
            text = lines[i]
            # Content lines lose up to the fence's own indentation.
            strip = len(text) - len(text.lstrip(" "))
            body.append((i + 1, text[min(indent, strip):]))
            i += 1
        i += 1
        yield start, info, body


def rustdoc_line(text):
    """What rustdoc compiles for one line of a block, and how many leading
    characters it dropped."""
    trimmed = text.strip()
    if trimmed.startswith("##"):
        k = text.index("##")
        return text[:k] + text[k + 1:], 0
    if trimmed.startswith("# "):
        k = text.index("# ")
        return text[k + 2:], k + 2
    if trimmed == "#":
        return "", 0
    return text, 0


MAIN_RE = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?(extern\s+(\"[^\"]*\"\s+)?)?fn\s+main\s*[(<]", re.M)


def make_example(body):
    """The example file for a block, and for each of its lines the markdown
    (line, column offset) it came from (None for lines rustdoc adds)."""
    attrs, code = [], []
    for lineno, text in body:
        line, offset = rustdoc_line(text)
        (attrs if line.lstrip().startswith("#![") else code).append((line, (lineno, offset)))
    out = [("#![allow(unused)]", None)] + attrs
    joined = "\n".join(t for t, _ in code)
    if MAIN_RE.search(joined):
        out += code
    elif joined.rstrip().endswith("(())"):
        out += [("fn main() { fn _inner() -> core::result::Result<(), impl core::fmt::Debug> {", None)]
        out += code
        out += [("} _inner().unwrap() }", None)]
    else:
        out += [("fn main() {", None)] + code + [("}", None)]
    return "\n".join(t for t, _ in out) + "\n", [m for _, m in out]


def install_dependencies(readme):
    """The `cargo add` lines of the README's Install section, as Cargo.toml
    dependency tables (portia itself excluded: it is taken by path)."""
    text = readme.read_text()
    m = re.search(r"^## Install\s*$(.*?)(?=^## )", text, re.M | re.S)
    if not m:
        sys.exit("check-snippets: README.md has no '## Install' section")
    deps = {}
    for line in m.group(1).split("\n"):
        if not line.strip().startswith("cargo add "):
            continue
        args = shlex.split(line, comments=True)[2:]
        names, features, default_features = [], [], True
        j = 0
        while j < len(args):
            a = args[j]
            if a in ("--features", "-F"):
                features += re.split(r"[,\s]+", args[j + 1])
                j += 1
            elif a.startswith("--features="):
                features += re.split(r"[,\s]+", a.split("=", 1)[1])
            elif a == "--no-default-features":
                default_features = False
            elif a in ("--git", "--path", "--branch", "--tag", "--rev", "--rename", "--registry"):
                j += 1
            elif not a.startswith("-"):
                names.append(a)
            j += 1
        for name in names:
            if name == "portia":
                continue
            # `cargo add` would take the newest release; with this repo's Cargo.lock
            # copied in, "*" takes the version this crate is tested with.
            version = name.split("@", 1)[1] if "@" in name else "*"
            name = name.split("@", 1)[0]
            dep = deps.setdefault(name, {"version": version, "features": []})
            dep["features"] += [f for f in features if f and f not in dep["features"]]
            if not default_features:
                dep["default-features"] = False
    return deps


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    return json.dumps(v)


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    sources = [root / "README.md"] + sorted((root / "src" / "docs").glob("*.md"))
    crate = root / "target" / "snippets"
    examples_dir = crate / "examples"
    examples_dir.mkdir(parents=True, exist_ok=True)

    snippets = []  # (name, source path, fence line, line map, features)
    for src in sources:
        stem = re.sub(r"\W", "_", src.stem.lower())
        n = 0
        for start, info, body in fenced_blocks(src):
            words = lang_words(info)
            if not is_rust(words) or SKIP_WORDS & set(words) or any(w.startswith("ignore-") for w in words):
                continue
            n += 1
            name = f"snippet_{stem}_{n}"
            code, line_map = make_example(body)
            features = sorted(set(re.findall(r'feature\s*=\s*"([^"]+)"', code)))
            # Unchanged files keep their times, so cargo checks only what changed.
            path = examples_dir / f"{name}.rs"
            if not path.exists() or path.read_text() != code:
                path.write_text(code)
            snippets.append((name, src.relative_to(root), start, line_map, features))

    deps = install_dependencies(root / "README.md")
    all_features = sorted({f for s in snippets for f in s[4]})
    manifest = [
        "# Generated by .ci/check-snippets: a user's crate, one example per snippet.",
        "[package]",
        'name = "portia-snippets"',
        'version = "0.0.0"',
        'edition = "2024"',
        "publish = false",
        "autoexamples = false",
        "",
        "[workspace]",
        "",
        "[features]",
    ]
    manifest += [f'{f} = ["portia/{f}"]' for f in all_features]
    manifest += ["", "[dependencies]", f"portia = {{ path = {json.dumps(str(root))} }}"]
    for name, dep in sorted(deps.items()):
        fields = {k: v for k, v in dep.items() if v != []}
        manifest.append(f"{name} = {{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in fields.items()) + " }")
    for name, _, _, _, features in snippets:
        manifest += ["", "[[example]]", f'name = "{name}"', f'path = "examples/{name}.rs"']
        if features:
            manifest.append(f"required-features = {toml_value(features)}")
    for old in examples_dir.glob("*.rs"):
        if old.stem not in {s[0] for s in snippets}:
            old.unlink()
    (crate / "Cargo.toml").write_text("\n".join(manifest) + "\n")
    # The versions this crate is tested with; cargo trims it to what the snippets use.
    (crate / "Cargo.lock").write_bytes((root / "Cargo.lock").read_bytes())

    print(f"check-snippets: {len(snippets)} snippets from {len(sources)} files, "
          f"dependencies: portia (path), " + ", ".join(
              f"{n} {d['features']}" if d["features"] else n for n, d in sorted(deps.items())))

    # The repo's own target dir (or the one cargo test used, when it is set), so the
    # dependencies compiled for the tests are shared.
    env = dict(os.environ, CARGO_TARGET_DIR=os.environ.get("CARGO_TARGET_DIR") or str(root / "target"))
    by_name = {s[0]: s for s in snippets}
    errors = {}  # example name -> [rendered messages]
    other_failure = []
    # One cargo run per feature set, so that a block without a feature gate is checked
    # without the features the gated ones turn on.
    groups = {}
    for name, _, _, _, features in snippets:
        groups.setdefault(tuple(features), []).append(name)
    for features, names in sorted(groups.items()):
        cmd = ["cargo", "check", "--manifest-path", str(crate / "Cargo.toml"), "--keep-going",
               "--message-format=json-diagnostic-rendered-ansi" if os.environ.get("CARGO_TERM_COLOR") == "always"
               else "--message-format=json"]
        if features:
            cmd += ["--features", ",".join(features)]
        for n in names:
            cmd += ["--example", n]
        print("check-snippets: " + " ".join(shlex.quote(c) for c in cmd[:2] + cmd[4:]), flush=True)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen_example_error = False
        for raw in proc.stdout.splitlines():
            try:
                msg = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if msg.get("reason") != "compiler-message":
                continue
            target = msg.get("target", {}).get("name")
            m = msg["message"]
            if m.get("level") not in ("error", "error: internal compiler error"):
                continue
            if target in by_name:
                seen_example_error = True
                errors.setdefault(target, []).append(m)
            else:
                other_failure.append(m.get("rendered") or m.get("message"))
        if proc.returncode != 0 and not seen_example_error and not other_failure:
            other_failure.append(proc.stderr)

    if other_failure:
        print("check-snippets: the snippet crate did not build for a reason other than a snippet:")
        for text in other_failure:
            print(text)
        return 1
    if not errors:
        print(f"check-snippets: all {len(snippets)} snippets compile in a user's crate")
        return 0

    for name in (s[0] for s in snippets):
        if name not in errors:
            continue
        _, src, start, line_map, _ = by_name[name]
        print(f"\n=== {src}:{start}: this snippet does not compile in a user's crate "
              f"(target/snippets/examples/{name}.rs)")
        for m in errors[name]:
            where = ""
            for span in m.get("spans", []):
                if span.get("is_primary") and span["file_name"].endswith(f"{name}.rs"):
                    origin = line_map[span["line_start"] - 1] if span["line_start"] <= len(line_map) else None
                    if origin:
                        where = f"  at {src}:{origin[0]}:{span['column_start'] + origin[1]}\n"
                    break
            print(where + (m.get("rendered") or m.get("message")).rstrip())
    print(f"\ncheck-snippets: {len(errors)} of {len(snippets)} snippets do not compile "
          f"with only portia and the Install section's dependencies")
    return 1


if __name__ == "__main__":
    sys.exit(main())
