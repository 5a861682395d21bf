"""The checkout's layout: no top-level module of ours may share its import name with an installed
distribution (transformers now requires Hugging Face's `kernels`, which our old `kernels/` shadowed)."""
import importlib.metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def top_level_names(root=ROOT):
    """Import names the checkout puts on sys.path when run from its root: *.py files and folders with Python in them."""
    names = {p.stem for p in root.glob("*.py")}
    names |= {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.py"))}
    names.add("config")  # config files are executed, not imported, but a folder of that name still shadows
    return names


def clashes(root=ROOT):
    installed = importlib.metadata.packages_distributions()
    return {name: installed[name] for name in sorted(top_level_names(root)) if name in installed}


def test_no_top_level_module_shadows_an_installed_distribution():
    found = clashes()
    assert not found, "top-level names of this checkout shadow installed packages: " + ", ".join(
        f"{name} (from {', '.join(dists)})" for name, dists in found.items())


def test_the_guard_names_a_clash(tmp_path):
    (tmp_path / "tqdm.py").write_text("")  # tqdm is a requirement, so always installed
    (tmp_path / "mine.py").write_text("")
    assert clashes(tmp_path) == {"tqdm": ["tqdm"]}
    assert {"tqdm", "mine", "config"} <= top_level_names(tmp_path)
