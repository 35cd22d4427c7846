"""The documentation stays true: links, anchors, generated reference, commands, both languages.

Pure file checks (plus the reference generator and the admin CLI's argument parser); no network,
no daemon.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
LANGS = ("en", "zh")


def markdown_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------------------
# A small Markdown reader: fenced code, headings, links, anchors
# ---------------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*?(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)


def blocks(text: str):
    """Yield (line, fence_info or None) for every line; fence_info is set inside fenced code."""
    fence = None
    info = None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence, info = m.group(1), m.group(2).lower()
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and line.strip().strip(fence[0]) == "":
                fence = info = None
                continue
            yield line, info
            continue
        yield line, None


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lowercased, punctuation dropped, spaces -> '-'.

    CJK characters are letters and stay; full-width punctuation (：（），、) goes.
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = INLINE_CODE.sub(lambda m: m.group(2), text)
    text = re.sub(r"(\*\*|__|\*|~~)", "", text)
    text = text.strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LMN")
    return kept.replace(" ", "-")


def headings(path: Path) -> list[tuple[int, str]]:
    out = []
    for line, info in blocks(path.read_text(encoding="utf-8")):
        if info is None:
            m = HEADING.match(line)
            if m:
                out.append((len(m.group(1)), m.group(2)))
    return out


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for _level, text in headings(path):
        slug = github_slug(text)
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        found.add(slug)
    for line, info in blocks(path.read_text(encoding="utf-8")):
        if info is None:
            found.update(HTML_ANCHOR.findall(line))
    return found


def links(path: Path) -> list[str]:
    out = []
    for line, info in blocks(path.read_text(encoding="utf-8")):
        if info is not None:
            continue
        m = REF_DEF.match(line)
        if m:
            out.append(m.group(1))
            continue
        out += LINK.findall(INLINE_CODE.sub("", line))
    return out


# ---------------------------------------------------------------------------
# (1) relative links and anchors resolve
# ---------------------------------------------------------------------------


def test_slug_rules():
    assert github_slug("What survives a restart") == "what-survives-a-restart"
    assert github_slug("Hook or CDI: `gpu_device_mode`") == "hook-or-cdi-gpu_device_mode"
    assert github_slug("Option A: a `registry-mirrors` entry in each daemon") == \
        "option-a-a-registry-mirrors-entry-in-each-daemon"
    assert github_slug("Worked example: 4 GPUs, 3 students asking for 2 each") == \
        "worked-example-4-gpus-3-students-asking-for-2-each"
    assert github_slug("GPU 策略：共享与独占") == "gpu-策略共享与独占"
    assert github_slug("登录（SSH 隧道）") == "登录ssh-隧道"
    assert github_slug("`rootless-gpu-admin`：配置并检查主机") == "rootless-gpu-admin配置并检查主机"


@pytest.mark.parametrize("path", markdown_files(), ids=rel)
def test_relative_links_and_anchors_resolve(path):
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: {dest} does not exist")
            continue
        if not dest.is_relative_to(ROOT):
            problems.append(f"{target}: points outside the repository")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{target}: an anchor into a non-Markdown file")
            elif anchor not in anchors(dest):
                problems.append(f"{target}: no heading or <a id> '{anchor}' in {rel(dest)}")
    assert not problems, f"{rel(path)}:\n  " + "\n  ".join(problems)


def test_readme_links_the_docs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/README.md" in text
    for lang in LANGS:
        assert f"docs/{lang}/" in text


# ---------------------------------------------------------------------------
# (2) the generated configuration reference is current
# ---------------------------------------------------------------------------


def test_config_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"), "--check"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, (
        "docs/*/config-reference.md differ from the code; run 'python scripts/gen_config_reference.py'\n"
        + result.stdout[-6000:] + result.stderr[-2000:]
    )


def test_config_reference_covers_every_own_trait():
    from rootless_gpu_spawner import RootlessGPUSpawner

    for lang in LANGS:
        text = (DOCS / lang / "config-reference.md").read_text(encoding="utf-8")
        for name in RootlessGPUSpawner.class_own_traits(config=True):
            assert f"#### `{name}`" in text, (lang, name)
        assert not re.search(r" at 0x[0-9a-f]+", text), "a memory address leaked into the reference"


# ---------------------------------------------------------------------------
# (3) commands shown exist
# ---------------------------------------------------------------------------

SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
#: Programs a reader's host has (or installs from the distribution); not part of this repository.
STANDARD_TOOLS = {
    "apt-get", "bash", "cat", "chmod", "chown", "cp", "docker", "echo", "export", "fuser", "git",
    "groupadd", "id", "journalctl", "jupyterhub", "kill", "loginctl", "ls", "mkdir", "mkhomedir_helper",
    "modprobe", "mv", "nvidia-ctk", "nvidia-smi", "pip", "python", "python3", "rm", "scp", "sh", "ssh",
    "sudo", "sysctl", "systemctl", "useradd", "usermod",
    "munge", "sbatch", "scancel", "scontrol", "sinfo", "squeue",  # Slurm (docs/*/slurm.md)
}


def project_scripts() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["project"].get("scripts", {}))


def spawner_entry_points() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["project"].get("entry-points", {}).get("jupyterhub.spawners", {}))


def shell_commands(text: str, quick_start_only: bool = False):
    """Commands in shell code blocks: (argv, line). Console blocks: only '# ' / '$ ' prompt lines."""
    if quick_start_only:
        m = re.search(r"^## Quick start.*?$(.*?)^## ", text, re.M | re.S)
        assert m, "README.md has no '## Quick start' section"
        text = m.group(1)
    pending = ""
    for line, info in blocks(text):
        if info not in SHELL_BLOCKS:
            continue
        if info == "console":
            if not line.startswith(("# ", "$ ")):
                continue
            line = line[2:]
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        segment: list[str] = []
        for word in words + [";"]:
            if word not in ("&&", "||", ";", "|"):
                segment.append(word)
                continue
            argv, segment = segment, []
            while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):  # VAR=value cmd
                argv = argv[1:]
            if argv and argv[0] == "sudo":
                argv = argv[1:]
            if argv:
                yield argv, line.strip()


def check_command(argv, line, scripts: set[str]) -> list[str]:
    problems = []
    cmd = argv[0]
    if cmd in ("bash", "sh") and len(argv) > 1 and not argv[1].startswith("-"):
        script = ROOT / argv[1]
        if not script.is_file():
            problems.append(f"{line!r}: {argv[1]} does not exist")
    elif "/" in cmd:
        if not cmd.startswith("/"):  # a repository path such as scripts/x.sh
            path = ROOT / cmd
            if not path.is_file():
                problems.append(f"{line!r}: {cmd} does not exist")
            elif not os.access(path, os.X_OK):
                problems.append(f"{line!r}: {cmd} is not executable (run it with bash or chmod +x)")
    elif cmd.startswith("rootless-gpu"):
        if cmd not in scripts:
            problems.append(f"{line!r}: {cmd} is not in pyproject.toml [project.scripts]")
    elif cmd not in STANDARD_TOOLS:
        problems.append(f"{line!r}: unknown command {cmd!r} (not a project script, not a standard tool)")
    if cmd == "rootless-gpu-admin":
        from rootless_gpu_spawner.admin import build_parser

        try:
            build_parser().parse_args(argv[1:])
        except SystemExit:
            problems.append(f"{line!r}: rootless-gpu-admin does not accept these arguments")
    return problems


def test_quick_start_commands_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = list(shell_commands(text, quick_start_only=True))
    assert commands, "no commands found in the README quick start"
    problems = []
    for argv, line in commands:
        problems += check_command(argv, line, project_scripts())
        if argv[0] in ("bash", "sh"):
            assert (ROOT / argv[1]).is_file()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", markdown_files(), ids=rel)
def test_commands_in_docs_exist(path, capsys):
    scripts = project_scripts()
    problems = []
    for argv, line in shell_commands(path.read_text(encoding="utf-8")):
        problems += check_command(argv, line, scripts)
    capsys.readouterr()  # argparse's usage messages
    assert not problems, f"{rel(path)}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", markdown_files(), ids=rel)
def test_repository_paths_named_in_docs_exist(path):
    text = path.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/.-])((?:scripts|tests|bench|rootless_gpu_spawner)/[\w./-]*\w\.(?:py|sh))", text))
    named |= {m.replace(".", "/") + ".py" for m in re.findall(r"python3? -m ((?:tests|bench)\.[\w.]+)", text)}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{rel(path)} names files that do not exist: {missing}"
    for console_script in set(re.findall(r"(?<![\w/.-])rootless-gpu-[a-z]+(?![\w/-])", text)):
        assert console_script in project_scripts() | spawner_entry_points(), (
            f"{rel(path)}: {console_script} is not a console script nor a spawner entry point"
        )


# ---------------------------------------------------------------------------
# (4) both languages, same pages, same structure
# ---------------------------------------------------------------------------


def pages(lang: str) -> set[str]:
    return {p.name for p in (DOCS / lang).glob("*.md")}


def test_same_pages_in_both_languages():
    assert pages("en"), "docs/en is empty"
    assert pages("en") == pages("zh"), (
        f"only in docs/en: {sorted(pages('en') - pages('zh'))}; only in docs/zh: {sorted(pages('zh') - pages('en'))}"
    )


@pytest.mark.parametrize("name", sorted(pages("en") & pages("zh")))
def test_same_structure_in_both_languages(name):
    en = [level for level, _ in headings(DOCS / "en" / name)]
    zh = [level for level, _ in headings(DOCS / "zh" / name)]
    assert en == zh, f"{name}: heading levels differ between docs/en and docs/zh:\n en {en}\n zh {zh}"
    html = [HTML_ANCHOR.findall((DOCS / lang / name).read_text(encoding="utf-8")) for lang in LANGS]
    assert html[0] == html[1], f"{name}: explicit anchors (<a id>) differ between the languages"


#: Pages written by another command's author; they link their translation once he adds it.
TRANSLATION_LINK_EXEMPT = set()


def test_every_page_links_its_translation():
    for lang, other in (("en", "zh"), ("zh", "en")):
        for name in pages(lang) - TRANSLATION_LINK_EXEMPT:
            text = (DOCS / lang / name).read_text(encoding="utf-8")
            assert f"../{other}/{name}" in text, f"docs/{lang}/{name} does not link docs/{other}/{name}"


# ---------------------------------------------------------------------------
# The example configuration is explained line by line
# ---------------------------------------------------------------------------


def config_settings() -> list[str]:
    """``c.Section.name`` of every assignment in jupyterhub_config.py, commented-out ones included."""
    source = (ROOT / "jupyterhub_config.py").read_text(encoding="utf-8")
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute):
                    names.append(f"c.{target.value.attr}.{target.attr}")
    names += re.findall(r"^#\s*(c\.\w+\.\w+)\s*=", source, re.M)
    return names


def test_example_config_explained_line_by_line():
    settings = config_settings()
    assert "c.JupyterHub.spawner_class" in settings
    for lang in LANGS:
        text = (DOCS / lang / "jupyterhub-config.md").read_text(encoding="utf-8")
        missing = [s for s in settings if s not in text]
        assert not missing, f"docs/{lang}/jupyterhub-config.md does not explain {missing}"


def test_no_machine_specific_paths_in_docs():
    for path in markdown_files() + [ROOT / "jupyterhub_config.py", ROOT / "scripts" / "gen_config_reference.py"]:
        text = path.read_text(encoding="utf-8")
        assert "/work/" not in text, f"{rel(path)} contains a machine-specific path"
