"""Prompts: the base model's prompt grammar, parsing, and AV preferences -> prompts.

Grammar of the base model (trained from scratch, so only this grammar is understood):
``"a {sign words} sign on a {colour} background"``, e.g. "a speed limit sign on a blue
background". Speed-limit prompts carry the value in km/h: "a speed limit 30 sign on a red
background" (:data:`SPEED_VALUES`; the generic "a speed limit sign" leaves the digits to
chance). DreamBooth prompts insert the rare identifier: "a sks stop sign on a blue
background". Re-contextualised prompts end with "in {context}" ("a stop sign in a snowy
street"); the CPU default has not seen contexts, they matter for a fine-tuned SD model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from carla_mr.config.vocab import COLOURS, SIGN_CLASSES, SIGN_WORDS, SPEED_VALUES
from carla_mr.errors import InputError

DEFAULT_CONTEXTS: tuple[str, ...] = ("a city street", "a snowy road", "a forest road", "a night highway")

_WORD_TO_KIND = {w: k for k, w in SIGN_WORDS.items()}
_WORD_TO_KIND.update({k: k for k in SIGN_CLASSES})
_WORD_TO_KIND.update({k.replace("_", " "): k for k in SIGN_CLASSES})


def prompt_for(kind: str, colour: str | None = None, *, token: str | None = None, context: str | None = None,
               value: int | None = None) -> str:
    """The prompt for one sign kind (+ background colour, rare token, context, and for
    ``speed_limit`` the value in km/h: "a speed limit 30 sign on a red background")."""
    if kind not in SIGN_CLASSES:
        raise InputError(f"unknown sign class {kind!r}; known: {', '.join(SIGN_CLASSES)}", field="sign class")
    words = SIGN_WORDS[kind]
    if value is not None:
        if kind != "speed_limit":
            raise InputError(f"only speed_limit prompts carry a value, got value {value!r} for {kind!r}",
                             field="value")
        if int(value) not in SPEED_VALUES:
            raise InputError(f"unknown speed value {value!r}; known: {', '.join(map(str, SPEED_VALUES))}",
                             field="value")
        words = f"{words} {int(value)}"
    if token:
        words = f"{token} {words}"
    p = f"a {words} sign"
    if colour is not None:
        if colour not in COLOURS:
            raise InputError(f"unknown background colour {colour!r}; known: {', '.join(COLOURS)}", field="colour")
        p += f" on a {colour} background"
    if context:
        p += f" in {context}"
    return p


_PAT = re.compile(r"^\s*an?\s+(?:(?P<token>[a-z0-9]+)\s+)??(?P<words>[a-z_ ]+?)(?:\s+(?P<value>[0-9]+))?\s+sign"
                  r"(?:\s+on\s+an?\s+(?P<colour>[a-z]+)\s+background)?(?:\s+in\s+(?P<context>.+?))?\s*$")


@dataclass(frozen=True)
class ParsedPrompt:
    kind: str
    colour: str | None
    token: str | None
    context: str | None
    value: int | None = None  # speed limit in km/h when the prompt names one


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Recover (kind, colour, token, context) from a prompt of the grammar above.

    InputError naming the prompt if the sign class is unknown (so generation never runs on a
    class the validator cannot score).
    """
    text = " ".join(str(prompt).lower().split())
    m = _PAT.match(text)
    if m:
        words = m.group("words").strip()
        token = m.group("token")
        kind = _WORD_TO_KIND.get(words)
        if kind is None and token is not None:  # "a speed limit" parsed as token "speed"?
            kind = _WORD_TO_KIND.get(f"{token} {words}")
            token = None if kind is not None else token
        if kind is None:
            # try dropping a leading rare token from the words
            head, _, rest = words.partition(" ")
            if rest in _WORD_TO_KIND:
                kind, token = _WORD_TO_KIND[rest], head
        if kind is not None:
            colour = m.group("colour")
            if colour is not None and colour not in COLOURS:
                raise InputError(f"unknown background colour {colour!r} in prompt {prompt!r}; known: "
                                 f"{', '.join(COLOURS)}", field="prompt")
            value = m.group("value")
            if value is not None:
                value = int(value)
                if kind != "speed_limit" or value not in SPEED_VALUES:
                    raise InputError(f"value {value} in prompt {prompt!r} is not a speed limit the model knows; "
                                     f"write 'a speed limit <v> sign' with <v> one of "
                                     f"{', '.join(map(str, SPEED_VALUES))}", field="prompt")
            return ParsedPrompt(kind, colour, token, m.group("context"), value)
    raise InputError(f"prompt {prompt!r} names no known sign class; write 'a <sign> sign [on a <colour> background]' "
                     f"with <sign> one of: {', '.join(SIGN_WORDS.values())}", field="prompt")


@dataclass
class Preferences:
    """An AV's preference cache: which signs, background colours and contexts it wants to see.

    ``token``: the DreamBooth identifier of a fine-tuned model (None for the base model).
    """

    signs: Sequence[str] = SIGN_CLASSES
    colours: Sequence[str] = tuple(COLOURS)
    contexts: Sequence[str] = ()
    token: str | None = None

    def __post_init__(self):
        for s in self.signs:
            if s not in SIGN_CLASSES:
                raise InputError(f"unknown sign class {s!r} in preferences; known: {', '.join(SIGN_CLASSES)}",
                                 field="preferences.signs")
        for c in self.colours:
            if c not in COLOURS:
                raise InputError(f"unknown colour {c!r} in preferences; known: {', '.join(COLOURS)}",
                                 field="preferences.colours")
        if not self.signs:
            raise InputError("preferences name no sign class", field="preferences.signs")


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    kind: str
    colour: str | None
    context: str | None
    subset: str  # "background" (colour changed) or "context" (re-contextualised)
    value: int | None = None  # speed limit (km/h) the prompt names, if any


def preference_prompts(prefs: Preferences) -> list[PromptSpec]:
    """Every conditioned prompt the preferences ask for: kind x colour ("background" subset)
    and kind x context ("context" subset)."""
    out = []
    for k in prefs.signs:
        for c in prefs.colours:
            out.append(PromptSpec(prompt_for(k, c, token=prefs.token), k, c, None, "background"))
        for ctx in prefs.contexts:
            out.append(PromptSpec(prompt_for(k, None, token=prefs.token, context=ctx), k, None, ctx, "context"))
    return out
