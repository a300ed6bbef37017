"""Hand-built, topic-agnostic features of an OpenAI chat request, for the complexity model.

Why these features: on routing-outcome data, text models that learn words memorise topics and
do worse than counting tokens on topics they have not seen. What generalises is the *shape* of
the task: how long it is, how much of it is an answer-option block and what those options look
like (numbers, "all of the above", statement pairs, negated stems), math and code density,
reasoning cues ("calculate", "which must be true"), and how dense the prose is. Every feature
here is a count or ratio that a new topic can have too.

Which text is read: the content features come from the last user turn (the request to answer);
the rest of the conversation (system prompt, earlier turns, tool results) only enters through
turn counts and context length. A fixed system prompt therefore does not push every request of a
deployment to the strong tier. Non-text parts (images, audio) are ignored; odd shapes of input
(non-dict messages, non-string content, unknown roles) contribute nothing instead of raising.

Speed: this runs on the event loop for every ``model: auto`` request. Content features read at
most ``HEAD_CHARS + TAIL_CHARS`` characters (head+tail, where the question and its options are);
lengths use the full text. Everything is ``str`` methods, one dict lookup per word and a few single-character-class
regexes, so a 2k-token prompt featurizes in about 0.2 ms.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from metering.tokens import content_text

HEAD_CHARS = 2000
TAIL_CHARS = 1000
# Characters of each option read by the char-trigram near-duplicate feature (latency cap).
DUP_CHARS = 64

# One entry per feature, in vector order. Keep in sync with ``featurize`` (checked by a test).
FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",  # full length of the request turn
    "log_words",
    "n_lines",
    "log_stem_chars",  # text before the answer-option block
    "n_options",
    "log_opt_mean_chars",
    "opt_len_cv",  # spread of option lengths: one long option vs. uniform ones
    "opt_numeric_frac",  # options that are numbers / formulas (computation needed)
    "opt_combo",  # "all/none of the above", "both", "I and II" style options
    "opt_dup_words",  # near-duplicate options: max word-set Jaccard over option pairs
    "opt_dup_trigrams",  # the same with character trigrams of each option's first DUP_CHARS characters
    "statement_pair",  # "Statement 1 | ... Statement 2 | ..." true/false grids
    "neg_stem",  # NOT / EXCEPT / LEAST / FALSE in the question
    "digit_frac",
    "math_sym_rate",  # = + ^ * / < > per 100 chars
    "latex_or_formula",  # backslashes, $ and sub/superscripts
    "code_rate",  # braces, semicolons, code keywords
    "calc_cues",  # calculate / compute / solve / how many / value
    "reason_cues",  # must / suppose / assume / implies / then / valid
    "judgement_cues",  # likely / best / strongest / primarily
    "question_marks",
    "sentences",
    "mean_word_len",
    "long_word_frac",
    "quote_rate",
    "paragraphs",
    "non_ascii_frac",  # other languages and special symbols
    "n_turns",
    "log_context_chars",  # system prompt, earlier turns and tool results
    "has_tools",
)
N_FEATURES = len(FEATURE_NAMES)

_OPTION_LINE = re.compile(r"^\s*\(?([A-Ja-j])[.):]\s+(.*)$")
_NUMERIC_OPTION = re.compile(r"^[\s$\-+−(]*\d[\d\s.,/^*+\-−×%$()a-zA-Z√πe]{0,30}$")
_COMBO_OPTION = re.compile(
    r"\b(all of the above|none of the above|both|neither|all of these|none of these)\b|"
    r"^(I|II|III|IV)(\s*(,|and|only)\s*(I|II|III|IV)?)*\s*(only)?\.?$",
    re.IGNORECASE,
)
# Case-sensitive on purpose: exam-style negation is written in capitals ("Which is NOT ...").
_WORD = re.compile(r"[a-z]+")
_NEG_STEM = re.compile(r"NOT|EXCEPT|LEAST|FALSE|INCORRECT|UNLIKELY")
_MATH_SYM = re.compile(r"[=+^*/<>≤≥±√∑∫]")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
# Punctuation -> space, so ``str.split`` yields bare lower-case words for the cue lexicon.
_WORDS_ONLY = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’"})

# Cue lexicon: one dict lookup per word instead of one regex pass per cue family (10x faster).
_CUES: dict[str, int] = {}
for _slot, _words in enumerate(
    (
        # 0 calc: the task needs a computation
        "calculate compute computed solve evaluate determine estimate find many much probability equation "
        "derivative integral ratio percent value sum product maximum minimum degree order",
        # 1 reason: deduction, conditions, validity
        "must suppose assume assuming implies therefore valid invalid then iff necessarily consistent entail "
        "entails follows conclusion premise argument",
        # 2 judgement: choose the best of plausible options
        "likely best strongest weakest primarily most least appropriate should probably",
        # 3 code keywords
        "def return int void while printf print function var let const class import elif else null none "
        "true false public static",
    )
):
    for _word in _words.split():
        _CUES[_word] = _slot
N_CUES = 4


def _message_text(message: Any) -> tuple[str, str]:
    """(role, text) of one message; ('', '') for anything that is not a chat message."""
    if not isinstance(message, dict):
        return "", ""
    role = message.get("role")
    role = role if isinstance(role, str) else ""
    text = content_text(message.get("content"))
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                text += str(fn.get("name", "")) + str(fn.get("arguments", ""))
    return role, text


def split_request(messages: Any) -> tuple[str, int, int, bool]:
    """(request text, number of turns, context chars, has tool traffic) of an OpenAI ``messages`` list.

    The request is the last user turn; without one, the last non-assistant text (e.g. a bare system
    prompt). Assistant turns count towards the context, since the model has to read them too.
    """
    if not isinstance(messages, (list, tuple)):
        return "", 0, 0, False
    parsed = [_message_text(m) for m in messages]
    parsed = [(role, text) for role, text in parsed if role or text]
    request_idx = next((i for i in range(len(parsed) - 1, -1, -1) if parsed[i][0] == "user"), None)
    if request_idx is None:
        request_idx = next((i for i in range(len(parsed) - 1, -1, -1) if parsed[i][0] != "assistant"), None)
    request = parsed[request_idx][1] if request_idx is not None else ""
    context = sum(len(text) for i, (_, text) in enumerate(parsed) if i != request_idx)
    has_tools = any(role in ("tool", "function") for role, _ in parsed) or any(
        isinstance(m, dict) and bool(m.get("tool_calls")) for m in messages
    )
    return request, len(parsed), context, has_tools


def truncate(text: str) -> str:
    """Head and tail of a long text: the instruction and the question/options are at the ends."""
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def _option_block(lines: list[str]) -> tuple[int, list[str]]:
    """(index of the first option line, option texts) of the last run of lettered options A., B., ...

    Needs at least two consecutive letters starting at A so that "a) list items" in prose that
    do not start at A are not mistaken for answer options.
    """
    options: list[str] = []
    start = len(lines)
    expected = 0
    for i, line in enumerate(lines):
        m = _OPTION_LINE.match(line)
        if m and ord(m.group(1).upper()) - 65 == expected:
            if expected == 0:
                start, options = i, []
            options.append(m.group(2).strip())
            expected += 1
        elif m and m.group(1).upper() == "A":
            start, options, expected = i, [m.group(2).strip()], 1
    if len(options) < 2:
        return len(lines), []
    return start, options


def _option_dup(options: list[str]) -> float:
    """Largest word-set Jaccard similarity over pairs of answer options (0 with fewer than two).

    Options that differ only in a detail ("I and II" / "I and III", "increases, decreases" /
    "increases, increases") make a question harder than options told apart at a glance
    (benchmarks/classifier/RESULTS.md, round 2). Kept next to ``_option_dup_trigrams``: the two
    together were chosen over either alone by nested grouped CV (round 3).
    """
    sets = [set(_WORD.findall(o.lower())) for o in options]
    best = 0.0
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            union = len(sets[i] | sets[j])
            if union:
                best = max(best, len(sets[i] & sets[j]) / union)
    return best


def _option_dup_trigrams(options: list[str]) -> float:
    """Largest character-trigram Jaccard similarity over pairs of answer options (0 with fewer than two).

    Sees what the word sets cannot: differences inside a word ("decrease" / "decreases") and digits
    and symbols, which the word sets drop ("4.5 m/s" / "4.8 m/s" are identical word sets). Only the
    first ``DUP_CHARS`` characters of each option, for latency: uncapped trigram sets of 200-character
    law options cost ~60 us instead of ~16 us, and caps of 48-96 scored the same under grouped CV
    (benchmarks/classifier/RESULTS.md, section 8). |A u B| = |A| + |B| - |A n B| saves building the union.
    """
    grams = []
    for o in options:
        o = o[:DUP_CHARS].lower()
        grams.append(set(zip(o, o[1:], o[2:])) or {o})  # options under 3 chars: the option itself
    best = 0.0
    for i, a in enumerate(grams):
        size = len(a)
        for b in grams[i + 1 :]:
            inter = len(a & b)
            union = size + len(b) - inter
            if inter > best * union:
                best = inter / union
    return best


def _cue_counts(text: str) -> list[int]:
    counts = [0] * N_CUES
    get = _CUES.get
    for word in text.lower().translate(_WORDS_ONLY).split():
        slot = get(word)
        if slot is not None:
            counts[slot] += 1
    return counts


def featurize(messages: Any) -> np.ndarray:
    """The feature vector (float32, ``N_FEATURES``) of a chat request. Never raises on odd input."""
    request, n_turns, context_chars, has_tools = split_request(messages)
    full_chars = len(request)
    text = truncate(request)
    n = max(len(text), 1)
    lines = text.split("\n")
    opt_start, options = _option_block(lines)
    stem = "\n".join(lines[:opt_start])
    words = text.split()
    n_words = max(len(words), 1)
    word_lens = list(map(len, words))
    opt_lens = [len(o) for o in options] or [0]
    opt_mean = sum(opt_lens) / len(opt_lens)
    # Plain Python: numpy's per-call overhead exceeds the work for <= 10 numbers.
    opt_std = math.sqrt(sum((k - opt_mean) ** 2 for k in opt_lens) / len(opt_lens))
    per100 = 100.0 / n
    calc, reason, judge, code_words = _cue_counts(text)

    vec = (
        math.log1p(full_chars),
        math.log1p(len(words) * full_chars / n),
        min(len(lines), 200),
        math.log1p(len(stem)),
        len(options),
        math.log1p(opt_mean),
        opt_std / opt_mean if opt_mean > 0 else 0.0,
        sum(1 for o in options if _NUMERIC_OPTION.match(o)) / len(options) if options else 0.0,
        sum(1 for o in options if _COMBO_OPTION.search(o)) / len(options) if options else 0.0,
        _option_dup(options),
        _option_dup_trigrams(options),
        float("Statement 1" in text),
        float(bool(_NEG_STEM.search(stem))),
        sum(map(text.count, "0123456789")) / n,
        len(_MATH_SYM.findall(text)) * per100,
        (text.count("\\") + text.count("$") + text.count("^") + text.count("_")) * per100,
        (text.count("{") + text.count(";") + text.count("==") + code_words) * per100,
        min(calc, 10),
        min(reason, 10),
        min(judge, 10),
        min(text.count("?"), 20),
        min(len(_SENTENCE_END.findall(stem)), 100),
        sum(word_lens) / n_words,
        sum(1 for k in word_lens if k >= 10) / n_words,
        (text.count('"') + text.count("“") + text.count("'")) * per100,
        min(text.count("\n\n"), 50),
        (n - len(text.encode("ascii", "ignore"))) / n,
        min(n_turns, 50),
        math.log1p(context_chars),
        float(has_tools),
    )
    return np.asarray(vec, dtype=np.float32)


def featurize_many(batch: list[Any]) -> np.ndarray:
    """Feature matrix of many requests (rows in input order)."""
    if not batch:
        return np.zeros((0, N_FEATURES), dtype=np.float32)
    return np.stack([featurize(m) for m in batch])
