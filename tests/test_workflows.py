"""The GitHub workflows: actionlint finds nothing, CI runs .ci/run, the book is deployed to Pages
with the official Pages actions, and .ci/run goes through sudo only when it is not root."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
PAGES = WORKFLOWS / "pages.yml"


def actionlint() -> str:
    """The actionlint binary of this environment (requirements.txt pins the wheel that has it)."""
    here = Path(sys.executable).with_name("actionlint")
    found = str(here) if here.exists() else shutil.which("actionlint")
    assert found, "actionlint is not installed: pip install -r requirements.txt"
    return found


def run_actionlint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [actionlint(), "-no-color", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def load(path: Path) -> dict:
    """A workflow as a dict. PyYAML reads the key `on` as True (YAML 1.1): it is renamed back."""
    workflow = yaml.safe_load(path.read_text())
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def uses(step: dict) -> str:
    """The action a step uses, without its version: "actions/checkout"."""
    return step.get("uses", "").split("@")[0]


def test_actionlint_finds_nothing():
    result = run_actionlint(CI, PAGES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The check above can fail: an unknown input and a misspelt expression are both reported."""
    broken = tmp_path / "broken.yml"
    text = CI.read_text().replace('python-version: "3.11"', 'python-versoin: "3.11"')
    broken.write_text(text.replace("${{ github.ref }}", "${{ github.refx }}"))
    result = run_actionlint(broken)
    assert result.returncode != 0
    assert "python-versoin" in result.stdout and "refx" in result.stdout, result.stdout


def test_ci_runs_the_ci_script_on_main_and_pull_requests():
    workflow = load(CI)
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["on"]["pull_request"]["branches"] == ["main"]
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    by_action = {uses(step): step for step in job["steps"] if "uses" in step}
    assert str(by_action["actions/setup-python"]["with"]["python-version"]) == "3.11"
    assert "actions/setup-node" in by_action
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert runs == ["bash .ci/run"], runs


def test_pages_builds_the_book_and_deploys_it_with_the_official_actions():
    workflow = load(PAGES)
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in workflow["on"]
    assert workflow["permissions"]["pages"] == "write"
    assert workflow["permissions"]["id-token"] == "write"
    assert workflow["concurrency"]["group"]
    assert workflow["concurrency"]["cancel-in-progress"] is False  # never stop a deployment
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    actions = [uses(step) for step in build["steps"]]
    assert "actions/configure-pages" in actions
    runs = [step.get("run") for step in build["steps"]]
    assert "make book" in runs
    upload = next(s for s in build["steps"] if uses(s) == "actions/upload-pages-artifact")
    assert upload["with"]["path"] == "_build/html"
    assert actions.index("actions/upload-pages-artifact") > runs.index("make book")
    assert deploy["needs"] == "build"
    assert deploy["environment"]["name"] == "github-pages"
    assert [uses(step) for step in deploy["steps"]] == ["actions/deploy-pages"]
    deployment = deploy["steps"][0]["id"]
    assert deploy["environment"]["url"] == f"${{{{ steps.{deployment}.outputs.page_url }}}}"


def test_every_action_is_pinned_to_a_version():
    for path in [CI, PAGES]:
        for step in steps(load(path)):
            if "uses" in step:
                assert "@v" in step["uses"], f"{path.name}: {step['uses']} has no version"


def fake_commands(tmp_path: Path, log: Path) -> Path:
    """A PATH folder where `id`, `sudo`, `apt-get` and `make` only write what they were asked to
    the log (and `sudo` then runs the command), with no chromium and no npm on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "id": '#!/bin/sh\necho "$FAKE_UID"\n',
        "sudo": f'#!/bin/sh\necho "sudo $*" >> {log}\nexec "$@"\n',
        "apt-get": f'#!/bin/sh\necho "apt-get $*" >> {log}\n',
        "make": f'#!/bin/sh\necho "make $*" >> {log}\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for name in ["env", "dirname"]:
        os.symlink(shutil.which(name), bin_dir / name)
    return bin_dir


@pytest.mark.parametrize("uid", ["0", "1001"])
def test_ci_script_installs_what_is_missing_with_sudo_only_when_not_root(tmp_path, uid):
    copy = tmp_path / "repo" / ".ci" / "run"
    copy.parent.mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", copy)
    log = tmp_path / "log"
    bin_dir = fake_commands(tmp_path, log)
    environment = {"PATH": str(bin_dir), "FAKE_UID": uid}
    result = subprocess.run(
        ["/bin/bash", str(copy)], env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert installs == [
        "apt-get install -y -qq chromium",
        "apt-get install -y -qq npm",
    ]
    assert calls[-1] == "make test"
    sudo_calls = [c for c in calls if c.startswith("sudo ")]
    if uid == "0":
        assert sudo_calls == []
    else:
        assert len(sudo_calls) == 4 and all("apt-get" in c for c in sudo_calls), sudo_calls
