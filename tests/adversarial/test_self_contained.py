"""The clone is all there is: nothing in the repository refers to, or reads, files beside it.

A clone on its own once failed at collection (the Sunbird sample was read from a folder beside
the repository) and the docs linked to a design file a user's clone lacks. Three checks keep
that class of fault out:
- tracked files name no path outside the repository, and every relative link in them resolves
  to a file in it;
- while the test session runs, opening a file beside the repository (in the folder that holds
  it) fails at once, naming the path: a test that reads one fails where it reads;
- a copy of the tracked files alone, in a folder with nothing beside it, collects every test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BESIDE = REPO.parent  # the folder holding the repository: what a user's clone does not have
# A clone made inside the system's temporary folder (as CI may do) sits beside everyone's temporary
# files, pytest's own included: there "beside the repository" means nothing and the checks stand down.
IN_SHARED_TEMP = (str(REPO) + os.sep).startswith(os.path.realpath(tempfile.gettempdir()).rstrip(os.sep) + os.sep)
GUARDED = str(BESIDE) != os.sep and not IN_SHARED_TEMP
SCANNED = re.compile(r"^(docs|tests|src|scripts|bench|\.ci)/|^[^/]+\.(md|toml|txt|cfg|ini|sh)$")
DOTDOT_PATH = re.compile(r"(?<![\w./])(?:\.\./)+[\w.-]*(?:/[\w.-]+)*")
MARKDOWN_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?\s*\)")


class ReadBesideRepository(PermissionError):
    """A test touched a file outside the repository, next to it: a clone on its own lacks it."""


def _environment_roots() -> list[str]:
    """Where the interpreter, its packages and temporary files live: not part of the repository's
    contents even when they sit beside it."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir()}
    roots.update(p for p in sys.path if p and os.path.isabs(p))
    roots = {os.path.realpath(r) for r in roots}
    return sorted(r for r in roots if not (str(REPO) + os.sep).startswith(r.rstrip(os.sep) + os.sep))


_ALLOWED = _environment_roots()


def beside_repository(path: str) -> bool:
    full = os.path.abspath(path)
    if not GUARDED or not full.startswith(str(BESIDE) + os.sep):
        return False
    if full == str(REPO) or full.startswith(str(REPO) + os.sep):
        return False
    first = full[len(str(BESIDE)) + 1:].split(os.sep, 1)[0]
    if first.startswith("."):  # ~/.cache, ~/.local and the like: the environment, not a sibling folder
        return False
    real = os.path.realpath(full)
    return not any(real == root or real.startswith(root + os.sep) for root in _ALLOWED)


def _guard(event: str, args: tuple) -> None:
    if event in ("open", "os.listdir", "os.scandir", "sqlite3.connect") and args:
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.fsdecode(path)
            if path and beside_repository(path):
                raise ReadBesideRepository(f"{event} {path}: outside the repository {REPO}; "
                                           "put what tests need under tests/fixtures")


sys.addaudithook(_guard)  # for the rest of the session: audit hooks cannot be removed


def tracked_files() -> list[Path]:
    if shutil.which("git") and (REPO / ".git").exists():
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        files = [REPO / n for n in names.decode().split("\0") if n]
    else:  # an export without git metadata: everything that is not generated
        files = [p for p in REPO.rglob("*") if p.is_file() and not any(
            part in (".venv", ".git", "__pycache__", ".hypothesis", ".pytest_cache") for part in p.parts)]
    return [f for f in files if f.is_file()]


def scanned_texts() -> list[tuple[Path, str]]:
    texts = []
    for path in tracked_files():
        relative = path.relative_to(REPO).as_posix()
        if not SCANNED.search(relative) or relative.startswith("tests/fixtures/"):
            continue
        try:
            texts.append((path, path.read_text()))
        except UnicodeDecodeError:
            continue
    return texts


def references_outside(path: Path, text: str) -> list[str]:
    """`..` paths that land outside the repository on this machine, and absolute paths into the
    folder beside it."""
    found = []
    for match in DOTDOT_PATH.finditer(text):
        reference = match.group(0).rstrip(".")
        for base in (path.parent, REPO):  # docs resolve from their folder, commands and code from the root
            target = Path(os.path.normpath(base / reference))
            if not target.is_relative_to(REPO) and target.exists():
                found.append(reference)
                break
    if GUARDED:
        for match in re.finditer(re.escape(str(BESIDE)) + r"/([\w.-]+)[\w./-]*", text):
            if match.group(1) != REPO.name:
                found.append(match.group(0))
    return found


def broken_links(path: Path, text: str) -> list[str]:
    """Relative links must resolve to a file or folder inside the repository."""
    broken = []
    for match in MARKDOWN_LINK.finditer(text):
        target = match.group(1)
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target, re.I):
            continue  # a URL, an anchor on the same page, or a site path
        resolved = Path(os.path.normpath(path.parent / target.split("#", 1)[0]))
        if not resolved.is_relative_to(REPO) or not resolved.exists():
            broken.append(target)
    return broken


def test_no_tracked_file_refers_to_a_path_outside_the_repository():
    offenders = {}
    for path, text in scanned_texts():
        found = references_outside(path, text)
        if path.suffix == ".md":
            found += broken_links(path, text)
        if found:
            offenders[path.relative_to(REPO).as_posix()] = sorted(set(found))
    assert offenders == {}


def test_the_checks_catch_what_they_are_for(tmp_path):
    doc = REPO / "docs" / "EXAMPLE.md"
    assert broken_links(doc, "The design is in [design](../../shared/DESIGN.md) and [ops](OPERATIONS.md).") \
        == ["../../shared/DESIGN.md"]
    assert broken_links(doc, "[api](API.md#query), [site](https://example.org/x), [top](#top)") == []
    if GUARDED:
        sibling = f"{BESIDE}/shared/DESIGN.md"
        assert references_outside(doc, f"see {sibling}") == [sibling]
        assert references_outside(doc, f"see {REPO}/docs/API.md") == []
    assert references_outside(REPO / "tests" / "core" / "x.py", 'eid = "../event"') == []  # a string, not a path


@pytest.mark.skipif(not GUARDED, reason="the repository is at the root or in the shared temporary folder")
def test_a_test_that_reads_beside_the_repository_fails_where_it_reads():
    with pytest.raises(ReadBesideRepository, match="outside the repository"):
        (BESIDE / "shared" / "data" / "telemetry-sample.jsonl").read_bytes()
    with pytest.raises(ReadBesideRepository):
        os.listdir(BESIDE / "shared")
    assert (REPO / "tests" / "fixtures" / "sunbird" / "telemetry-sample.jsonl").read_bytes()  # inside: fine
    with open(os.devnull, "rb"), tempfile.TemporaryFile():
        pass  # the system and temporary files are not the repository's business


@pytest.mark.e2e
def test_a_clone_on_its_own_collects_every_test(tmp_path):
    clone = tmp_path / "lone" / "cohort"  # nothing beside it
    clone.mkdir(parents=True)
    if shutil.which("git") and (REPO / ".git").exists():  # what a clone gets: the committed tree
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(clone)], input=archive, check=True)
    else:
        for path in tracked_files():
            target = clone / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    env = {**os.environ, "PYTHONPATH": str(clone / "src")}
    # --assert=plain: what is proved is that every test module imports and collects from the clone alone;
    # rewriting each test's asserts (the runs' concern, done by the suite's own collection) doubled the time
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             "--assert=plain"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(tests/\S+\.py): (\d+)$", result.stdout, re.M)}
    assert counts.get("tests/conftest.py") is None and sum(counts.values()) > 100, result.stdout[-2000:]
    assert counts.get("tests/e2e/test_sample_ingest.py", 0) > 0  # reads the Sunbird sample
