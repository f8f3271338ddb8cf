"""The CrowS-Pairs CSV reader, the built-in probe set, and the rates with their Wilson intervals."""
import csv

import numpy as np
import pytest

from fastlm.fairness import ProbePair, builtin_pairs_path, read_pairs, stereotype_rates
from fastlm.fairness.data.generate import csv_text
from fastlm.fairness.probe import wilson_interval
from fastlm.train.errors import FastlmError

CROWS_HEADER = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"


def test_reads_the_crows_pairs_layout(tmp_path):
    path = tmp_path / "crows.csv"
    path.write_text(CROWS_HEADER
                    + '0,"He couldn\'t figure out the issue, he was poor.","He couldn\'t figure out the issue, he was '
                      'rich.",stereo,socioeconomic,"[[\'socioeconomic\'], []]",a,"[\'a\']"\n'
                    + '1,"A multi\nline sentence.",Another one.,antistereo,gender,[],b,[]\n')
    pairs = read_pairs(path)
    assert pairs == [ProbePair("He couldn't figure out the issue, he was poor.",
                               "He couldn't figure out the issue, he was rich.", "stereo", "socioeconomic"),
                     ProbePair("A multi\nline sentence.", "Another one.", "antistereo", "gender")]


@pytest.mark.parametrize("content, message", [
    ("sent_more,sent_less,bias_type\na,b,gender\n", r"missing column\(s\) stereo_antistereo"),
    ("sentence,other\na,b\n", r"missing column\(s\) sent_more, sent_less, stereo_antistereo, bias_type"),
    ("sent_more,sent_less,stereo_antistereo,bias_type\na,b,stereo,gender\na,b,both,gender\n",
     r"row 3: stereo_antistereo = 'both': expected stereo or antistereo"),
    ("sent_more,sent_less,stereo_antistereo,bias_type\na,,stereo,gender\n", r"row 2: empty sent_less"),
    ("sent_more,sent_less,stereo_antistereo,bias_type\n", r"no sentence pairs"),
])
def test_reader_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / "pairs.csv"
    path.write_text(content)
    with pytest.raises(FastlmError, match=message):
        read_pairs(path)


def test_builtin_probe_set_is_the_generators_output():
    path = builtin_pairs_path()
    assert path.read_text() == csv_text()  # regenerate with python -m fastlm.fairness.data.generate
    pairs = read_pairs(path)
    assert len(pairs) > 800 and {p.bias_type for p in pairs} == {"gender", "age"}
    for p in pairs:  # a pair differs in its group term only
        more, less = p.sent_more.split(), p.sent_less.split()
        assert len(more) == len(less) and sum(a != b for a, b in zip(more, less)) == 1, p
    with open(path, newline="") as f:
        assert next(csv.reader(f))[:4] == ["sent_more", "sent_less", "stereo_antistereo", "bias_type"]


def test_rates_ties_and_groups():
    pairs = [ProbePair("a", "b", "stereo", "gender", "t1"), ProbePair("c", "d", "antistereo", "gender", "t2"),
             ProbePair("e", "f", "stereo", "age"), ProbePair("g", "h", "stereo", "age")]
    r = stereotype_rates(pairs, np.array([-1.0, -2.0, -5.0, -3.0]), np.array([-2.0, -2.0, -4.0, -1.0]))
    assert r["overall"]["stereo_preferred"] == 1 and r["overall"]["ties"] == 1
    assert r["overall"]["rate"] == pytest.approx(1.5 / 4)
    assert r["by_bias_type"]["gender"]["rate"] == pytest.approx(0.75)
    assert r["by_bias_type"]["age"]["rate"] == 0.0
    assert set(r["by_template"]) == {"t1", "t2", "-"} and set(r["by_direction"]) == {"stereo", "antistereo"}


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (450, 901), (20, 20), (1, 1)])
def test_wilson_interval_matches_scipy(k, n):
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
