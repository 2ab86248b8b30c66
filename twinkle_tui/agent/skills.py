"""Skills: markdown the agent can read, with optional front matter (name, description, keywords).

Three sources, later ones win for the same name: the bundled skills (twinkle_tui.skills, the repository's skills/),
$TWINKLE_HOME/auto/skills/local/, and an optional community git repository (TWINKLE_SKILLS_GIT, cloned into
$TWINKLE_HOME/auto/skills/community/ in the background, best effort, 10 s, never blocking). The system prompt
carries an index of every skill and the most relevant ones in full, within a size budget; load_skill returns one.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

GIT_ENV = "TWINKLE_SKILLS_GIT"
GIT_TIMEOUT = 10.0
PROMPT_BUDGET = 6000  # characters of full skills in the system prompt
WORD = re.compile(r"[a-z0-9]+")
STOP = {"the", "a", "an", "and", "or", "of", "to", "in", "is", "it", "my", "how", "what", "which", "why", "when",
        "where", "who", "for", "on", "with", "do", "does", "i", "me", "we", "our", "this", "that", "be", "are", "can",
        "you", "your", "run", "runs", "show", "shows", "use", "used", "there", "about", "from", "at", "by", "as", "if"}
KEYWORD_WEIGHT = 3  # a word the skill names as a keyword counts more than one from its description


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    body: str
    keywords: tuple[str, ...] = ()
    source: str = "bundled"
    words: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def text(self) -> str:
        return f"## Skill: {self.name}\n{self.body.strip()}\n"


def parse_skill(text: str, fallback_name: str, source: str) -> Skill:
    """A markdown file with optional YAML front matter between --- lines."""
    meta: dict[str, object] = {}
    body = text
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end > 0:
            try:
                loaded = yaml.safe_load(text[3:end]) or {}
                meta = loaded if isinstance(loaded, dict) else {}
            except yaml.YAMLError as exc:
                log.warning("skill %s: bad front matter: %s", fallback_name, exc)
            body = text[end + 4 :].lstrip("\n")
    name = str(meta.get("name") or fallback_name)
    first = next((line.strip("# ").strip() for line in body.splitlines() if line.strip()), name)
    description = str(meta.get("description") or first)
    raw_keywords = meta.get("keywords") or []
    keywords = tuple(str(k).lower() for k in (raw_keywords if isinstance(raw_keywords, list) else [raw_keywords]))
    words = frozenset(_words(" ".join([name, description])))
    return Skill(name, description, body, keywords, source, words)


def _words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOP and len(w) > 1}


class SkillLibrary:
    def __init__(self, home: Path, git_url: str | None = None) -> None:
        self.home = home
        self.git_url = git_url
        self.skills: dict[str, Skill] = {}

    @property
    def local_dir(self) -> Path:
        return self.home / "auto" / "skills" / "local"

    @property
    def community_dir(self) -> Path:
        return self.home / "auto" / "skills" / "community"

    def load(self) -> SkillLibrary:
        found: dict[str, Skill] = {}
        bundled = resources.files("twinkle_tui.skills")
        for entry in sorted(bundled.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".md"):
                skill = parse_skill(entry.read_text(encoding="utf-8"), entry.name[:-3], "bundled")
                found[skill.name] = skill
        for folder, source in ((self.community_dir, "community"), (self.local_dir, "local")):
            if folder.is_dir():
                for path in sorted(folder.rglob("*.md")):
                    try:
                        skill = parse_skill(path.read_text(encoding="utf-8"), path.stem, source)
                    except (OSError, UnicodeDecodeError) as exc:
                        log.warning("cannot read skill %s: %s", path, exc)
                        continue
                    found[skill.name] = skill
        self.skills = found
        return self

    def sync_community(self, timeout: float = GIT_TIMEOUT) -> str | None:
        """Clone or update the community skills (best effort); returns what went wrong, or None."""
        if not self.git_url:
            return None
        target = self.community_dir
        if (target / ".git").is_dir():
            cmd = ["git", "-C", str(target), "pull", "--ff-only", "--depth", "1"]
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            cmd = ["git", "clone", "--depth", "1", self.git_url, str(target)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"community skills not updated: {exc}"
        if done.returncode != 0:
            return f"community skills not updated: {(done.stderr.strip().splitlines() or ['git failed'])[-1]}"
        return None

    def index(self) -> str:
        return "\n".join(f"- {s.name}: {s.description}" for s in sorted(self.skills.values(), key=lambda s: s.name))

    def relevant(self, query: str, budget: int = PROMPT_BUDGET) -> list[Skill]:
        """The skills that share the most words with the query, as many as fit in `budget` characters."""
        words = _words(query)
        scored = sorted(((KEYWORD_WEIGHT * len(words & set(s.keywords)) + len(words & s.words), s.name)
                         for s in self.skills.values()), reverse=True)
        best = scored[0][0] if scored else 0
        out: list[Skill] = []
        used = 0
        for score, name in scored:
            if score == 0 or score < best / 2:  # clearly less related than the best match
                break
            skill = self.skills[name]
            if used + len(skill.text) > budget:
                continue
            out.append(skill)
            used += len(skill.text)
        return out

    def names(self) -> list[str]:
        return sorted(self.skills)

    def get(self, name: str) -> Skill | None:
        if name in self.skills:
            return self.skills[name]
        lowered = {k.lower(): v for k, v in self.skills.items()}
        return lowered.get(name.lower())
