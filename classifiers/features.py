"""Hand-built, topic-agnostic features of an OpenAI chat request, for the complexity model.

Why these features: on routing-outcome data, text models that learn words memorise topics and
do worse than counting tokens on topics they have not seen. What generalises is the *shape* of
the task: how long it is and how it is laid out, how many constraints and steps it states, how
dense it is in math, numbers and code, what kind of question it asks (a fact, an explanation, a
piece of writing, a choice among options) and, for exam questions, what the options look like.
Every feature here is a count or ratio that a new topic can have too.

Stable against trivia. Counts enter on a log scale and densities are smoothed towards zero with
a pseudo-length (``_SMOOTH_CHARS``), so one more digit or word in a short question barely moves
them; numbers are counted as numbers, not digits ("policy 7" and "policy 42" are one number each).

Which text is read: the content features come from the last user turn (the request to answer);
the rest of the conversation (system prompt, earlier turns, tool results) only enters through
turn counts and context length. A fixed system prompt therefore does not push every request of a
deployment to the strong tier. Non-text parts (images, audio) are ignored; odd shapes of input
(non-dict messages, non-string content, unknown roles) contribute nothing instead of raising.

``CONTEXT_FEATURES`` are the ones the shipped training data cannot teach (every row is one user
turn): the default model keeps their weights at zero, a model learned from a deployment's own
traffic (``tiergate learn``) may use them.

Speed: this runs on the event loop for every ``model: auto`` request. Content features read at
most ``HEAD_CHARS + TAIL_CHARS`` characters (head+tail, where the question and its options are);
lengths use the full text. Everything is ``str`` methods, one dict lookup per word and a few
single-character-class regexes.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from text.messages import content_text

HEAD_CHARS = 2000
TAIL_CHARS = 1000
# Characters of each option read by the char-trigram near-duplicate feature (latency cap).
DUP_CHARS = 64
# Pseudo-length added to every density's denominator: a 17-character question with one digit is
# not "6% digits". ~ a short paragraph, so densities mean something only once there is text.
_SMOOTH_CHARS = 200
_SMOOTH_WORDS = 20

# One entry per feature, in vector order. Keep in sync with ``featurize`` (checked by a test).
FEATURE_NAMES: tuple[str, ...] = (
    # length and layout of the request turn (log scale)
    "log_chars",
    "log_words",
    "log_lines",
    "log_sentences",
    "log_paragraphs",
    "log_list_items",  # bulleted or numbered lines: enumerated requirements, steps, clues
    "log_questions",  # question marks
    # what kind of request (first word of the request)
    "ask_fact",  # what / who / when / where / which ...
    "ask_explain",  # how / why / explain / describe / compare ...
    "ask_produce",  # write / create / generate / list / summarise / translate ...
    # constraint, step and reasoning cues (log counts of lexicon words)
    "log_constraint_cues",  # exactly / at least / without / each / format / words ...
    "log_step_cues",  # first / then / next / finally / step ...
    "log_calc_cues",  # calculate / solve / how many / probability ...
    "log_reason_cues",  # must / suppose / implies / therefore / valid ...
    "log_judgement_cues",  # likely / best / primarily / most ...
    # math, numbers and code (smoothed densities)
    "log_numbers",
    "number_rate",  # numbers per word
    "math_sym_rate",  # = + ^ * / < > per 100 chars
    "latex_rate",  # backslashes, $ and sub/superscripts per 100 chars
    "code_rate",  # braces, semicolons, ==, code keywords per 100 chars
    # prose
    "mean_word_len",
    "long_word_frac",
    "quote_rate",
    "non_ascii_frac",  # other languages and special symbols
    # exam questions: a lettered answer-option block (all zero without one)
    "has_options",
    "log_options",
    "opt_len_cv",  # spread of option lengths: one long option vs. uniform ones
    "opt_numeric_frac",  # options that are numbers / formulas (computation needed)
    "opt_combo",  # "all/none of the above", "both", "I and II" style options
    "opt_dup_words",  # near-duplicate options: max word-set Jaccard over option pairs
    "opt_dup_trigrams",  # the same with character trigrams of each option's first DUP_CHARS characters
    "statement_pair",  # "Statement 1 | ... Statement 2 | ..." true/false grids
    "neg_stem",  # NOT / EXCEPT / LEAST / FALSE in the question
    # the conversation around the request
    "log_turns",
    "log_context_chars",  # system prompt, earlier turns and tool results
    "has_tools",
)
N_FEATURES = len(FEATURE_NAMES)
CONTEXT_FEATURES: tuple[str, ...] = ("log_turns", "log_context_chars", "has_tools")

_OPTION_LINE = re.compile(r"^\s*\(?([A-Ja-j])[.):]\s+(.*)$")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+\S", re.MULTILINE)
_NUMBER = re.compile(r"[0-9]+(?:[.,][0-9]+)*")  # [0-9], not \d: 1.5x faster, no Unicode lookup
_NUMERIC_OPTION = re.compile(r"^[\s$\-+−(]*\d[\d\s.,/^*+\-−×%$()a-zA-Z√πe]{0,30}$")
_COMBO_OPTION = re.compile(
    r"\b(all of the above|none of the above|both|neither|all of these|none of these)\b|"
    r"^(I|II|III|IV)(\s*(,|and|only)\s*(I|II|III|IV)?)*\s*(only)?\.?$",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z]+")
# Case-sensitive on purpose: exam-style negation is written in capitals ("Which is NOT ...").
_NEG_STEM = re.compile(r"NOT|EXCEPT|LEAST|FALSE|INCORRECT|UNLIKELY")
_MATH_SYM = re.compile(r"[=+^*/<>≤≥±√∑∫]")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
# Punctuation and digits -> space, so ``str.split`` yields bare lower-case words for the cue lexicon and the
# word statistics. Numbers are counted on their own (``_NUMBER``): "policy 31337" is not a question in longer words.
_WORDS_ONLY = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’0123456789"})

# Cue lexicon: one dict lookup per word instead of one regex pass per cue family (10x faster).
_CUE_FAMILIES = (
    # 0 calc: the task needs a computation
    ("calculate compute computed solve evaluate determine estimate find many much probability equation "
     "derivative integral ratio percent value sum product maximum minimum degree order"),
    # 1 reason: deduction, conditions, validity
    ("must suppose assume assuming implies therefore valid invalid iff necessarily consistent entail "
     "entails follows conclusion premise argument prove"),
    # 2 judgement: choose the best of plausible options
    "likely best strongest weakest primarily most least appropriate should probably",
    # 3 code keywords
    ("def return int void while printf print function var let const class import elif else null none "
     "true false public static"),
    # 4 constraints on the answer
    ("exactly least limit within without ensure include including exclude excluding format words characters "
     "sentences paragraphs bullet bullets json table only each every avoid maximum minimum require required"),
    # 5 steps
    "first second third next then finally step steps afterwards subsequently stage",
)
_CUES: dict[str, int] = {}
for _slot, _words in enumerate(_CUE_FAMILIES):
    for _word in _words.split():
        _CUES.setdefault(_word, _slot)
N_CUES = len(_CUE_FAMILIES)

# First word of the request -> question type (0 fact, 1 explain, 2 produce).
_ASK: dict[str, int] = {}
for _slot, _words in enumerate(
    (
        "what who whom whose when where which name is are was were does do did can",
        "how why explain describe discuss compare analyze analyse evaluate justify outline",
        ("write create generate make design implement build compose draft list give provide suggest summarize "
         "summarise translate rewrite edit plan develop brainstorm help"),
    )
):
    for _word in _words.split():
        _ASK[_word] = _slot


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
    (benchmarks/classifier/RESULTS.md, round 2).
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
    and symbols ("4.5 m/s" / "4.8 m/s" are identical word sets). Only the first ``DUP_CHARS``
    characters of each option, for latency (RESULTS.md, section 8). |A u B| = |A| + |B| - |A n B|
    saves building the union.
    """
    grams: list[set[tuple[str, ...] | str]] = []
    for o in options:
        o = o[:DUP_CHARS].lower()
        trigrams: set[tuple[str, ...] | str] = set(zip(o, o[1:], o[2:]))
        grams.append(trigrams or {o})  # options under 3 chars: the option itself
    best = 0.0
    for i, a in enumerate(grams):
        size = len(a)
        for b in grams[i + 1 :]:
            inter = len(a & b)
            union = size + len(b) - inter
            if inter > best * union:
                best = inter / union
    return best


def _cue_counts(words: list[str]) -> list[int]:
    counts = [0] * N_CUES
    get = _CUES.get
    for word in words:
        slot = get(word)
        if slot is not None:
            counts[slot] += 1
    return counts


def _option_features(options: list[str], stem: str, text: str) -> tuple[float, ...]:
    """The exam block: zeros when the request has no lettered answer options."""
    if not options:
        return (0.0,) * 9
    lens = [len(o) for o in options]
    mean = sum(lens) / len(lens)
    # Plain Python: numpy's per-call overhead exceeds the work for <= 10 numbers.
    std = math.sqrt(sum((k - mean) ** 2 for k in lens) / len(lens))
    return (
        1.0,
        math.log1p(len(options)),
        std / mean if mean > 0 else 0.0,
        sum(1 for o in options if _NUMERIC_OPTION.match(o)) / len(options),
        sum(1 for o in options if _COMBO_OPTION.search(o)) / len(options),
        _option_dup(options),
        _option_dup_trigrams(options),
        float("Statement 1" in text),
        float(bool(_NEG_STEM.search(stem))),
    )


def featurize(messages: Any, vocabulary: dict[str, int] | None = None) -> np.ndarray:
    """The feature vector (float32) of a chat request. Never raises on odd input.

    ``N_FEATURES`` hand features; with a ``vocabulary`` (word -> column, from a model ``tiergate learn``
    fitted on a deployment's traffic) followed by one 0/1 column per vocabulary word present in the request.
    """
    request, n_turns, context_chars, has_tools = split_request(messages)
    full_chars = len(request)
    text = truncate(request)
    n = len(text)
    lines = text.split("\n")
    opt_start, options = _option_block(lines)
    stem = "\n".join(lines[:opt_start]) if options else text
    # Words without punctuation: one split serves the counts, the lengths and the cue lexicon.
    bare = text.lower().translate(_WORDS_ONLY).split()
    n_words = len(bare)
    word_lens = list(map(len, bare))
    calc, reason, judge, code_words, constraint, step = _cue_counts(bare)
    ask = _ASK.get(bare[0], -1) if bare else -1
    numbers = len(_NUMBER.findall(text))
    per100 = 100.0 / (n + _SMOOTH_CHARS)
    per_word = 1.0 / (n_words + _SMOOTH_WORDS)
    log = math.log1p

    vec = (
        log(full_chars),
        log(n_words * full_chars / n) if n else 0.0,
        log(sum(1 for line in lines if line.strip())),
        log(len(_SENTENCE_END.findall(stem))),
        log(text.count("\n\n")),
        log(len(_LIST_LINE.findall(stem))),
        log(text.count("?")),
        float(ask == 0),
        float(ask == 1),
        float(ask == 2),
        log(constraint),
        log(step),
        log(calc),
        log(reason),
        log(judge),
        log(numbers),
        numbers * per_word,
        len(_MATH_SYM.findall(text)) * per100,
        (text.count("\\") + text.count("$") + text.count("^") + text.count("_")) * per100,
        (text.count("{") + text.count(";") + text.count("==") + code_words) * per100,
        # Smoothed towards a typical English word (4.7 chars) so a three-word question is not extreme.
        (sum(word_lens) + 4.7 * 5) / (n_words + 5),
        sum(1 for k in word_lens if k >= 10) * per_word,
        (text.count('"') + text.count("“") + text.count("'")) * per100,
        (n - len(text.encode("ascii", "ignore"))) * per100,
        *_option_features(options, stem, text),
        log(n_turns),
        log(context_chars),
        float(has_tools),
    )
    if vocabulary is None:
        return np.asarray(vec, dtype=np.float32)
    out = np.zeros(N_FEATURES + len(vocabulary), dtype=np.float32)
    out[:N_FEATURES] = vec
    get = vocabulary.get
    for word in set(bare):
        j = get(word)
        if j is not None:
            out[N_FEATURES + j] = 1.0
    return out


def request_words(messages: Any) -> list[str]:
    """The bare lower-case words ``featurize`` reads from the request turn (for building a vocabulary)."""
    return truncate(split_request(messages)[0]).lower().translate(_WORDS_ONLY).split()


def featurize_many(batch: list[Any], vocabulary: dict[str, int] | None = None) -> np.ndarray:
    """Feature matrix of many requests (rows in input order)."""
    if not batch:
        return np.zeros((0, N_FEATURES + len(vocabulary or ())), dtype=np.float32)
    return np.stack([featurize(m, vocabulary) for m in batch])
