"""The README points readers at lines of the code; those lines must still be the ones it describes."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_line_references_land_on_a_definition_or_an_spdf_marked_line():
    refs = re.findall(r"`(\w+\.py):(\d+)`", (ROOT / "README.md").read_text())
    assert refs, "the README names no code lines"
    for file, line in refs:
        text = (ROOT / file).read_text().splitlines()[int(line) - 1]
        assert text.lstrip().startswith("def ") or "# SPDF:" in text, f"{file}:{line} is now: {text.strip()}"
