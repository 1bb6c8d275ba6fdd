"""Negative-label mining (NegLabel's rule) and its corpora."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainables.errors import UserInputError
from trainables.ood import negatives
from trainables.ood.negatives import Words


def _unit(angle_degrees: float) -> torch.Tensor:
    angle = torch.deg2rad(torch.tensor(angle_degrees))
    return torch.stack([torch.cos(angle), torch.sin(angle)])


def test_mining_keeps_the_candidates_with_the_lowest_percentile_similarity():
    # ID labels at 0 and 10 degrees; a candidate at angle a has cosines cos(a), cos(a - 10).
    id_features = torch.stack([_unit(0), _unit(10)])
    words = Words(nouns=["near", "far", "middle", "farthest"], adjectives=["red", "blue"])
    noun_angles = {"near": 5, "far": 120, "middle": 60, "farthest": 180}
    adjective_angles = {"red": 90, "blue": 20}
    noun_features = torch.stack([_unit(noun_angles[w]) for w in words.nouns])
    adjective_features = torch.stack([_unit(adjective_angles[w]) for w in words.adjectives])
    # 3 of 6: nouns 4/6 * 3 = 2, adjectives 1; each pool's lowest 95th-percentile cosines.
    mined = negatives.mine(words, noun_features, adjective_features, id_features, count=3, percentile=95)
    assert mined == Words(nouns=["farthest", "far"], adjectives=["red"])


def test_percentile_statistic_interpolates_linearly():
    # Cosines to four ID labels: 0.0, 0.1, 0.2, 0.3; the 50th percentile interpolates to 0.15.
    id_features = torch.stack([_unit(90 - torch.rad2deg(torch.acos(torch.tensor(c))).item()) for c in (0.0, 0.1, 0.2, 0.3)])
    statistic = negatives.percentile_statistic(_unit(90).unsqueeze(0), id_features, 50)
    assert statistic.item() == pytest.approx(0.15, abs=1e-6)
    assert negatives.percentile_statistic(_unit(90).unsqueeze(0), id_features, 100).item() == pytest.approx(0.3, abs=1e-6)


def test_split_is_proportional_to_the_pools():
    assert negatives.split_count(10, 8578, 1921) == (8, 2)
    assert negatives.split_count(10499, 58546, 13091) == (8580, 1919)
    with pytest.raises(UserInputError, match="negatives.count must be between 1 and the 5 candidates, got 6"):
        negatives.split_count(6, 3, 2)


def test_candidates_drop_the_id_names_and_adjectives_that_are_nouns():
    words = Words(nouns=["Dog", "traffic light", "kite", "orange"], adjectives=["orange", "quick", "Kite"])
    pool = negatives.candidates(words, ["dog", "traffic_light"])
    assert pool == Words(nouns=["kite", "orange"], adjectives=["quick"])


def test_prompts_follow_neglabel():
    assert Words(["ring"], ["shiny"]).prompts() == ["The nice ring.", "This is a shiny photo."]


def _wordnet_file(path: Path, entries: list[str]) -> None:
    header = "  1 This software and database is being provided to you, the LICENSEE, by\n  2 Princeton University\n"
    path.write_text(header + "".join(entry + "\n" for entry in entries))


def test_wordnet_database_files_are_read(tmp_path):
    _wordnet_file(tmp_path / "data.noun", [
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived",
        "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 | a member of the genus Canis",
        "09999999 05 n 01 dog 1 000 | a repeated lemma",
    ])  # fmt: skip
    _wordnet_file(tmp_path / "data.adj", ["00001740 00 a 02 able 0 galore(ip) 0 000 | having the means"])
    words = negatives.wordnet_words(tmp_path)
    assert words == Words(nouns=["entity", "dog", "domestic dog", "Canis familiaris"], adjectives=["able", "galore"])


def test_a_missing_wordnet_is_one_clear_line(tmp_path):
    with pytest.raises(UserInputError) as error:
        negatives.wordnet_words(tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message and "apt-get install wordnet-base" in message


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="Debian's wordnet-base is not installed")
def test_debians_wordnet_has_neglabels_pools():
    words = negatives.wordnet_words()
    # NegLabel's corpus (REFERENCE.md 4): 58,546 unique nouns from 25 noun files, 13,091 adjectives.
    assert 70_000 < len(words.nouns) < 130_000 and 15_000 < len(words.adjectives) < 25_000
    assert "dog" in words.nouns and "happy" in words.adjectives


def test_word_lists(tmp_path):
    listed = tmp_path / "words.txt"
    listed.write_text("# a comment\nkite\n\nadj: shiny\nkite\nhot air balloon\n")
    assert negatives.word_list(listed) == Words(nouns=["kite", "hot air balloon"], adjectives=["shiny"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UserInputError, match=f"negatives.word_list {empty} holds no words"):
        negatives.word_list(empty)
    with pytest.raises(UserInputError, match="does not exist"):
        negatives.word_list(tmp_path / "missing.txt")
