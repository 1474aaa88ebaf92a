"""Conditional generation: role, tone, style and if/then rules rendered into a system prompt; knows nothing of models.

    from gptkit.prompting.conditions import render_conditions

    render_conditions({"tone": "formal", "rules": [{"if": "the customer is angry", "then": "apologise first"}]},
                      "Customer: where is my parcel?\\nAgent:")
    # -> "Tone: formal\\nIf the customer is angry, apologise first.\\n\\nCustomer: where is my parcel?\\nAgent:"

Conditional prefixes (`render_conditions`). A control prefix that states options before the prompt:

    conditions = {
        "role": str, "tone": str, "style": str, "audience": str, "language": str, "length": str|int,
        "format": str,                                     # each optional; one line "Key: value"
        "rules": [ {"if": str, "then": str} | str, ... ],  # one line each, in order
    }
    or a list of rules alone (the same as {"rules": [...]}).

The attribute lines come first, in the order above (whatever the dict's order), as "Tone: formal";
then each rule: {"if": C, "then": A} as "If C, A." and a plain string S as "S." (a final ".", "!" or
"?" is kept, not doubled). Values are single lines (no newline), non-empty. The lines are joined with
"\\n" and followed by a blank line and the prompt; empty conditions leave the prompt unchanged.
Unknown keys are errors that list the allowed ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gptkit.errors import GptkitError, require

ATTRIBUTES = ("role", "tone", "style", "audience", "language", "length", "format")
CONDITION_KEYS = (*ATTRIBUTES, "rules")
RULE_KEYS = ("if", "then")


@dataclass(frozen=True)
class Condition:
    """A rule "if `when`, `then`" (`when` empty: an unconditional instruction)."""

    then: str
    when: str = ""

    def render(self) -> str:
        sentence = f"If {self.when}, {self.then}" if self.when else self.then
        return sentence if sentence[-1] in ".!?" else sentence + "."


def _line_value(value: Any, where: str) -> str:
    require(isinstance(value, (str, int)) and not isinstance(value, bool),
            f"{where} must be a string, got {type(value).__name__}")
    value = str(value).strip()
    require(value != "", f"{where} is empty")
    require("\n" not in value, f"{where} must be a single line (the control prefix has one line per condition)")
    return value


def parse_rule(rule: Any, where: str = "rule") -> Condition:
    """A `Condition` from {"if": ..., "then": ...} or a plain string."""
    if isinstance(rule, Condition):
        return rule
    if isinstance(rule, str):
        return Condition(_line_value(rule, where))
    require(isinstance(rule, Mapping), f"{where} must be a string or a mapping with 'if' and 'then', "
                                       f"got {type(rule).__name__}")
    unknown = sorted(set(map(str, rule)) - set(RULE_KEYS))
    require(not unknown, f"{where} has unknown key(s) {unknown}; allowed: {', '.join(RULE_KEYS)}")
    missing = [k for k in RULE_KEYS if k not in rule]
    require(not missing, f"{where} lacks {' and '.join(map(repr, missing))}: write {{'if': ..., 'then': ...}}")
    return Condition(_line_value(rule["then"], f"{where} 'then'"), _line_value(rule["if"], f"{where} 'if'"))


def condition_lines(conditions: Mapping[str, Any] | Sequence[Any]) -> list[str]:
    """The control prefix's lines (see the module docstring for the format)."""
    if isinstance(conditions, (list, tuple)):
        conditions = {"rules": list(conditions)}
    require(isinstance(conditions, Mapping),
            f"conditions must be a mapping or a list of rules, got {type(conditions).__name__}")
    unknown = sorted(set(map(str, conditions)) - set(CONDITION_KEYS))
    require(not unknown, f"unknown condition key(s) {unknown}; allowed: {', '.join(CONDITION_KEYS)}")
    lines = [f"{key.capitalize()}: {_line_value(conditions[key], repr(key))}" for key in ATTRIBUTES
             if key in conditions]
    rules = conditions.get("rules", [])
    require(isinstance(rules, (list, tuple)), f"'rules' must be a list, got {type(rules).__name__}")
    lines += [parse_rule(rule, f"rule {i}").render() for i, rule in enumerate(rules, start=1)]
    return lines


def render_conditions(conditions: Mapping[str, Any] | Sequence[Any], base_prompt: str = "") -> str:
    """The control prefix for `conditions`, a blank line, then `base_prompt` (unchanged if no conditions)."""
    lines = condition_lines(conditions)
    return "\n".join(lines) + "\n\n" + base_prompt if lines else base_prompt


def read_conditions(spec: str) -> dict[str, Any] | list[Any]:
    """Conditions from a .yaml/.yml/.json file, or from inline YAML/JSON text (what `--conditions` takes)."""
    path = Path(spec)
    if spec.endswith((".yaml", ".yml", ".json")):
        require(path.is_file(), f"conditions file {spec} does not exist")
        text = path.read_text(encoding="utf-8")
    else:
        text = spec
    try:
        conditions = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise GptkitError(f"conditions {spec!r} are neither a file nor valid YAML/JSON: {e}") from None
    require(isinstance(conditions, (dict, list)),
            f"conditions must be a mapping (role, tone, ..., rules) or a list of rules, got {spec!r}")
    condition_lines(conditions)  # validated here, so a bad key fails before anything runs
    return conditions
