"""Every `rep3d` sub-command explains itself: a help text and a default for every option, options in groups, an
example line at the end; the constants the help repeats (to load fast) agree with the library's."""

import argparse
import re
from pathlib import Path

import pytest

from rep3d.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBPARSERS = _subparsers(build_parser())


def _undocumented_options(parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """``(options without help, optional options whose help, as printed, does not state a default)``."""
    missing_help, missing_default = [], []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        text = parser.formatter_class("rep3d")._get_help_string(action)
        label = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip():
            missing_help.append(label)
        elif action.option_strings and not action.required and "default" not in text.lower():
            missing_default.append(label)
    return missing_help, missing_default


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_states_its_default(name):
    missing_help, missing_default = _undocumented_options(SUBPARSERS[name])
    assert not missing_help, f"rep3d {name}: options without help: {missing_help}"
    assert not missing_default, f"rep3d {name}: options whose help does not state the default: {missing_default}"


def test_the_help_check_catches_a_bare_option():
    parser = argparse.ArgumentParser(formatter_class=SUBPARSERS["train"].formatter_class)
    parser.add_argument("--lr", type=float)  # what `rep3d train --lr` was: no help, no default
    parser.add_argument("--seed", type=int, help="random seed")  # help, but no default and not required
    parser.add_argument("--overlap", type=float, default=0.5, help="overlap")  # the formatter adds the default
    assert _undocumented_options(parser) == (["--lr"], ["--seed"])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_ends_with_one_example_of_the_command(name):
    last = SUBPARSERS[name].format_help().rstrip().splitlines()[-1]
    assert last.startswith("example: ") and f"rep3d {name}" in last, last


@pytest.mark.parametrize("name", ["train", "predict", "evaluate", "export"])
def test_long_option_lists_are_grouped(name):
    titles = {group.title for group in SUBPARSERS[name]._action_groups if group._group_actions}
    assert {"model", "output"} <= titles and len(titles) >= 3, titles


def test_repeated_constants_agree_with_the_library():
    from rep3d.analysis import DEFINITIONS, TARGETS
    from rep3d.cli import demo, erf, evaluate, export, phantom, predict
    from rep3d.data import phantom as phantom_data
    from rep3d.demo import DEMO_MODEL
    from rep3d.export import DYNAMIC_AXES, FORMATS, ONNX_OPSET
    from rep3d.inference.predictor import PRECISIONS
    from rep3d.layers.depthwise import BACKENDS

    assert (export.FORMATS, export.DYNAMIC_AXES, export.ONNX_OPSET, export.BACKENDS) == (
        FORMATS, DYNAMIC_AXES, ONNX_OPSET, BACKENDS)
    assert erf.TARGETS == TARGETS and erf.DEFINITIONS == DEFINITIONS and demo.DEMO_MODEL == DEMO_MODEL
    assert phantom.DEFAULT_SHAPE == phantom_data.DEFAULT_SHAPE
    assert tuple(phantom_data.PHANTOM_SETTINGS) == phantom.PHANTOM_SETTINGS
    assert evaluate.PRECISIONS == predict.PRECISIONS == PRECISIONS


# `rep3d <word>` in the documentation and in messages: <word> must be a command. A command line starts inline code,
# a line of a fenced block, `$(`, or follows ": " in a message ("predict with: rep3d predict ...").
RE_INLINE = re.compile(r"(?:`|: |\$\()[ \t]*rep3d ([a-z][a-z-]*[a-z])\b")
RE_LINE = re.compile(r"^[ \t]*(?:\$ )?rep3d ([a-z][a-z-]*[a-z])\b", re.MULTILINE)


def _named_commands(text: str, markdown: bool = True) -> set[str]:
    words = {m.group(1) for m in RE_INLINE.finditer(text)}
    if markdown:
        fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
        words |= {m.group(1) for block in fenced for m in RE_LINE.finditer(block)}
    return words


def test_docs_and_messages_name_only_commands_that_exist():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "rep3d").rglob("*.py")),
             *sorted((ROOT / "examples").glob("*.py"))]
    unknown = {}
    for path in files:
        if path.name == "changelog.md":
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":  # messages, help and docstrings; not the comments
            text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        words = _named_commands(text, markdown=path.suffix == ".md") - set(COMMANDS)
        if words:
            unknown[str(path.relative_to(ROOT))] = sorted(words)
    assert not unknown, f"`rep3d <command>` naming no command: {unknown}"


def test_the_command_check_sees_a_wrong_command():
    assert _named_commands("then run `rep3d segment scan.nii.gz`") == {"segment"}
    assert _named_commands("```bash\nrep3d fit --data d\n```\nrep3d is a library") == {"fit"}
    assert _named_commands('print("predict with: rep3d infer MODEL")', markdown=False) == {"infer"}
