"""The package as a user installs it: pip install, the console scripts, the scripts of a clone, the settings."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from cli import ROOT, run_script

from alrs.cli import ALL, SETTINGS, build_parser
from alrs.controllers import CONTROLLERS
from alrs.settings import runtime_settings

BIN = Path(sys.executable).parent


# Run by the installed wheel's Python, outside the clone: a released controller loads by name.
USE_A_RELEASED_CONTROLLER = """
import alrs, torch
from alrs.controllers import CONTROLLERS
from alrs.scheduler import LearnedLRScheduler
layer = torch.nn.Linear(4, 10)
scheduler = LearnedLRScheduler(torch.optim.Adam(layer.parameters(), lr=1e-2), "quick-mlp", layer)
print(alrs.__file__, scheduler.update_freq, all(c.card.is_file() for c in CONTROLLERS.values()))
"""


def test_pip_builds_the_package_with_its_console_scripts_and_nothing_else(tmp_path: Path) -> None:
    # The venv's setuptools, no network: the build `pip install .` makes, of a copy (setuptools writes build/).
    source = tmp_path / "source"
    shutil.copytree(ROOT / "alrs", source / "alrs", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-qw", str(tmp_path), "."]
    subprocess.run(command, check=True, capture_output=True, cwd=source)
    (wheel,) = tmp_path.glob("alrs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "alrs/commands/train.py" in names and "alrs/cli.py" in names
    assert {name.split("/")[0] for name in names if not name.startswith("alrs-")} == {"alrs"}  # no utils, tests
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("train", "baselines", "test"):
        assert f"alrs-{command} = alrs.commands.{command}:cli" in text
    for name in CONTROLLERS:  # the released controllers and their cards are package data
        assert {f"alrs/controllers/{name}/best.pt", f"alrs/controllers/{name}/README.md"} <= set(names)

    # Installed by pip into a fresh virtual environment outside the clone, which borrows this one's torch
    # (its site-packages on the path, its .pth files unread: not this clone's editable alrs).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, cwd=tmp_path)
    used = subprocess.run([python, "-c", USE_A_RELEASED_CONTROLLER], capture_output=True, text=True, cwd=tmp_path)
    assert used.returncode == 0, used.stderr
    module, update_freq, cards = used.stdout.split()
    assert Path(module).is_relative_to(site) and update_freq == "10" and cards == "True"


def test_the_console_scripts_do_what_the_scripts_do(tmp_path: Path) -> None:
    for command in ("train", "baselines", "test"):
        console = subprocess.run([str(BIN / f"alrs-{command}"), "--help"], capture_output=True, text=True, cwd=ROOT)
        script = run_script(f"{command}.py", "--help")
        assert console.returncode == script.returncode == 0, console.stderr
        words = [text.replace(f"alrs-{command}", f"{command}.py").split() for text in (console.stdout, script.stdout)]
        assert words[0] == words[1]  # the same flags and help (wrapped to the width of another name)
    console = subprocess.run(
        [str(BIN / "alrs-test"), "--test-id", "nope", "--out-dir", str(tmp_path)], capture_output=True, text=True
    )
    script = run_script("test.py", "--test-id", "nope", "--out-dir", str(tmp_path))
    assert console.returncode == script.returncode == 2
    assert console.stderr.replace("alrs-test", "test.py").split() == script.stderr.split()
    assert "no run 'nope'" in script.stderr


def test_a_script_without_a_dependency_names_the_install() -> None:
    hide_scipy = "import sys, runpy; sys.modules['scipy'] = None; runpy.run_path('test.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", hide_scipy], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "'scipy' is not installed" in result.stderr and "pip install -r requirements.txt" in result.stderr


def test_every_setting_is_one_declared_field_with_its_help_and_flag() -> None:
    fields = [(cls, f) for _, cls, _ in SETTINGS for f in dataclasses.fields(cls)]
    assert all(f.metadata.get("scripts") != () for _, f in fields)  # no hidden setting
    assert len(ALL) == len(fields)
    for key, setting in ALL.items():
        assert setting.help, key
        flag = f"--{key.replace('_', '-')}"
        helps = [build_parser(s)._option_string_actions[flag].help.replace("%%", "%") for s in setting.scripts]
        assert all(text.startswith(setting.help.removesuffix(".")) for text in helps), key
    assert "ppo_lr" in ALL and "learning_rate" not in ALL  # PPO's step size, apart from the child's LR
    assert runtime_settings(SETTINGS[0][1]) == {"data_dir", "device", "eval_batch_size"}


def test_the_settings_load_neither_the_optimizers_nor_the_environment() -> None:
    probe = "import sys, alrs.config; print(sorted(m for m in sys.modules if m.startswith(('alrs', 'torch'))))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "alrs.config" in loaded and "torch.optim" not in loaded and "alrs.env" not in loaded, loaded


def test_a_users_training_loop_loads_no_environment_and_no_ppo() -> None:
    probe = "import sys, alrs.scheduler; print(sorted(m for m in sys.modules if m.startswith('alrs')))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "alrs.scheduler" in loaded and "alrs.env" not in loaded and "alrs.ppo" not in loaded, loaded
