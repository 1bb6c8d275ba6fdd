"""Negative labels: words far from every ID label, mined from a corpus (NegLabel's rule, REFERENCE.md 4-5).

Candidates are WordNet nouns and adjectives (or a user's word list), minus the ID names. Each is
encoded in a hand-crafted prompt ("The nice {}." for nouns, "This is a {} photo." for adjectives);
its statistic is the `percentile`-th percentile (linear interpolation, NegLabel's `torch.quantile`)
of its cosine similarities to the ID labels' prompts, and the `count` candidates with the lowest
statistic are kept, split between nouns and adjectives in proportion to the two pools.

WordNet 3.0 is read from its database files (`data.noun`, `data.adj`): Debian's `wordnet-base`
installs them in /usr/share/wordnet, NLTK's downloader in `<nltk_data>/corpora/wordnet`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trainables.errors import UserInputError
from trainables.ood.config import NegativesConfig

NOUN_TEMPLATE = "The nice {}."
ADJECTIVE_TEMPLATE = "This is a {} photo."
ID_TEMPLATE = NOUN_TEMPLATE
"""NegLabel and LAPT prompt ID names as nouns."""

COMMON_WORDS = Path(__file__).parent / "words" / "wordnet_common.txt"
"""WordNet's most frequent single-word nouns and adjectives, shipped with the package (the file says how it was made)."""

WORDNET_HINT = "apt-get install wordnet-base (or python -m nltk.downloader wordnet), or give negatives.word_list"


def wordnet_dirs() -> list[Path]:
    """Where WordNet's database files are looked for, in order."""
    nltk_roots = [Path(p) for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    nltk_roots += [Path.home() / "nltk_data", Path("/usr/share/nltk_data"), Path("/usr/local/share/nltk_data")]
    return [Path("/usr/share/wordnet")] + [root / "corpora" / "wordnet" for root in nltk_roots]


@dataclass(frozen=True)
class Words:
    """Candidate negative labels by part of speech, each list deduplicated in corpus order."""

    nouns: list[str]
    adjectives: list[str]

    def prompts(self) -> list[str]:
        """The hand-crafted prompt of every word, nouns first."""
        return [NOUN_TEMPLATE.format(w) for w in self.nouns] + [ADJECTIVE_TEMPLATE.format(w) for w in self.adjectives]

    @property
    def all(self) -> list[str]:
        return self.nouns + self.adjectives


def _wordnet_lemmas(path: Path) -> list[str]:
    """The lemmas of a WordNet `data.*` file, in file order: `offset lexfile pos count (word lex_id)...`."""
    lemmas = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split(" ", 4)
            count = int(fields[3], 16)
            words = line.split(" ")[4 : 4 + 2 * count : 2]
            # Adjective markers such as "(a)" or "(ip)" follow some adjectives; underscores are spaces.
            lemmas += [re.sub(r"\([a-z]+\)$", "", word).replace("_", " ") for word in words]
    return lemmas


def wordnet_words(root: Path | None = None) -> Words:
    """WordNet's nouns and adjectives (`root`: a folder holding `data.noun` and `data.adj`)."""
    folders = [root] if root is not None else wordnet_dirs()
    for folder in folders:
        if (folder / "data.noun").is_file() and (folder / "data.adj").is_file():
            return Words(_dedupe(_wordnet_lemmas(folder / "data.noun")), _dedupe(_wordnet_lemmas(folder / "data.adj")))
    searched = ", ".join(str(folder) for folder in folders)
    raise UserInputError(f"no WordNet database (data.noun, data.adj) in {searched}: {WORDNET_HINT}")


def word_list(path: Path) -> Words:
    """A plain word list: one word or phrase per line, prompted as nouns; a line `adj:<word>` is an
    adjective, a line starting with `#` a comment."""
    if not Path(path).is_file():
        raise UserInputError(f"negatives.word_list {path} does not exist")
    nouns, adjectives = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        word = line.strip()
        if word.startswith("#"):
            continue
        if word.startswith("adj:"):
            adjectives.append(word.removeprefix("adj:").strip())
        elif word:
            nouns.append(word)
    words = Words(_dedupe(nouns), _dedupe(adjectives))
    if not words.all:
        raise UserInputError(f"negatives.word_list {path} holds no words")
    return words


def _dedupe(words: list[str]) -> list[str]:
    return list(dict.fromkeys(word for word in words if word))


def candidates(words: Words, id_names: list[str]) -> Words:
    """The candidate pool: the words minus the ID names (case-insensitive) and minus adjectives that
    are also nouns (LAPT's `generate_cossim_idname_wordnet_dedup`)."""
    taken = {name.replace("_", " ").lower() for name in id_names}
    nouns = [w for w in words.nouns if w.lower() not in taken]
    taken |= {w.lower() for w in nouns}
    return Words(nouns, [w for w in words.adjectives if w.lower() not in taken])


def split_count(count: int, num_nouns: int, num_adjectives: int) -> tuple[int, int]:
    """(nouns, adjectives) to keep of `count`, in proportion to the pools."""
    total = num_nouns + num_adjectives
    if not 1 <= count <= total:
        raise UserInputError(f"negatives.count must be between 1 and the {total} candidates, got {count}")
    nouns = round(count * num_nouns / total)
    return nouns, count - nouns


def percentile_statistic(candidate_features: torch.Tensor, id_features: torch.Tensor, percentile: float) -> torch.Tensor:
    """[N]: the `percentile`-th percentile over the ID labels of each candidate's cosine similarity."""
    cosines = F.normalize(candidate_features.float(), dim=-1) @ F.normalize(id_features.float(), dim=-1).T
    return torch.quantile(cosines, percentile / 100.0, dim=1)


def mine(
    words: Words, noun_features: torch.Tensor, adjective_features: torch.Tensor, id_features: torch.Tensor,
    count: int, percentile: float,
) -> Words:  # fmt: skip
    """The `count` candidates farthest from the ID labels (lowest percentile statistic), nouns and
    adjectives chosen separately in proportion to their pools, each in ascending order of the statistic."""
    keep_nouns, keep_adjectives = split_count(count, len(words.nouns), len(words.adjectives))
    chosen = []
    for pool, features, keep in ((words.nouns, noun_features, keep_nouns), (words.adjectives, adjective_features, keep_adjectives)):
        if keep == 0:
            chosen.append([])
            continue
        statistic = percentile_statistic(features, id_features, percentile)
        order = torch.argsort(statistic, stable=True)[:keep]
        chosen.append([pool[i] for i in order.tolist()])
    return Words(*chosen)


def mining_key(backbone_identity: str, id_names: list[str], words: Words, count: int, percentile: float) -> str:
    """What the mined list depends on, as a short hash: the backbone and its weights, the ID names,
    the corpus, M and the percentile."""
    content = json.dumps([backbone_identity, id_names, words.nouns, words.adjectives, count, percentile])
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def corpus(config: NegativesConfig) -> Words:
    """The candidate words `config` names: WordNet's nouns and adjectives, or a word list."""
    if config.corpus == "word_list":
        return word_list(config.word_list)
    if config.corpus == "common":
        return word_list(COMMON_WORDS)
    return wordnet_words(config.wordnet_dir)


def training_negatives(mined: Words, train_count: int | None) -> torch.Tensor:
    """Positions in `mined.all` of the negative labels that get training images: all of them, or the
    `train_count` farthest, nouns and adjectives in proportion (what mining `train_count` would keep,
    as LAPT mines 1,000 to train and 10,000 to test)."""
    if train_count is None:
        return torch.arange(len(mined.all))
    nouns, adjectives = split_count(train_count, len(mined.nouns), len(mined.adjectives))
    return torch.cat([torch.arange(nouns), len(mined.nouns) + torch.arange(adjectives)])
