"""Table 1 and Table 2 of Li et al. reproduced (docs/paper.md §1, §2, §4): exact counts, ±0.1 pp of every pruned %."""

from __future__ import annotations

import pytest

from jaxprune import paper

# docs/paper.md §4: (model, our FLOP, our params (conv + FC, no BN; ResNet-34 without projections)).
OURS = [
    ("VGG-16", 313_463_808, 14_978_250),
    ("VGG-16-pruned-A", 206_279_680, 5_390_698),
    ("ResNet-56", 125_485_696, 848_954),
    ("ResNet-56-pruned-A", 112_435_840, 769_466),
    ("ResNet-56-pruned-B", 90_907_264, 732_026),
    ("ResNet-110", 252_887_680, 1_719_866),
    ("ResNet-110-pruned-A", 212_779_648, 1_680_698),
    ("ResNet-110-pruned-B", 155_124_352, 1_161_722),
    ("ResNet-34", 3_644_493_824, 21_608_616),
    ("ResNet-34-pruned-A", 3_080_916_992, 19_963_560),
    ("ResNet-34-pruned-B", 2_763_001_856, 19_281_576),
    ("ResNet-34-pruned-C", 3_374_446_592, 20_051_112),
]
# docs/paper.md §4, our pruned % (FLOP, params) to two decimals.
PRUNED = {
    "VGG-16-pruned-A": (34.19, 64.01),
    "ResNet-56-pruned-A": (10.40, 9.36),
    "ResNet-56-pruned-B": (27.56, 13.77),
    "ResNet-110-pruned-A": (15.86, 2.28),
    "ResNet-110-pruned-B": (38.66, 32.45),
    "ResNet-34-pruned-A": (15.46, 7.61),
    "ResNet-34-pruned-B": (24.19, 10.77),
    "ResNet-34-pruned-C": (7.41, 7.21),
}
# docs/paper.md §2, "ours" columns: (MACs, weights, #maps A, FLOP % A).
TABLE2 = [
    (1_769_472, 1_728, 32, 50),
    (37_748_736, 36_864, 64, 50),
    (18_874_368, 73_728, 128, 0),
    (37_748_736, 147_456, 128, 0),
    (18_874_368, 294_912, 256, 0),
    (37_748_736, 589_824, 256, 0),
    (37_748_736, 589_824, 256, 0),
    (18_874_368, 1_179_648, 256, 50),
    (37_748_736, 2_359_296, 256, 75),
    (37_748_736, 2_359_296, 256, 75),
    (9_437_184, 2_359_296, 256, 75),
    (9_437_184, 2_359_296, 256, 75),
    (9_437_184, 2_359_296, 256, 75),
    (262_144, 262_144, 512, 50),
    (5_120, 5_120, 10, 0),
]


@pytest.fixture(scope="module")
def t1():
    return paper.table1()


def test_table1_counts_are_exact(t1):
    assert [(r.model, r.macs, r.params) for r in t1] == OURS


def test_table1_pruned_percent_within_a_tenth_of_a_point(t1):
    pruned = [r for r in t1 if r.preset is not None]
    assert [r.model for r in pruned] == list(PRUNED)
    for r in pruned:
        assert (round(r.macs_pruned, 2), round(r.params_pruned, 2)) == PRUNED[r.model]
        assert abs(r.macs_pruned_diff) <= 0.1 + 1e-9, r.model
        assert abs(r.params_pruned_diff) <= 0.1 + 1e-9, r.model
    for r in t1:
        if r.preset is None:
            assert r.macs_pruned is None and r.macs_pruned_diff is None and r.params_pruned_diff is None


def test_table1_absolute_values_at_printed_precision(t1):
    # 23 of 24 (docs/paper.md §4): ResNet-34-A's 19,963,560 prints as 2.00e7, the paper has 1.99e7.
    assert all(r.macs_agree for r in t1)
    assert [r.model for r in t1 if not r.params_agree] == ["ResNet-34-pruned-A"]


def test_table1_carries_the_printed_values(t1):
    r = {row.model: row for row in t1}
    assert (r["ResNet-56-pruned-B"].paper_macs, r["ResNet-56-pruned-B"].paper_macs_pruned) == ("9.09e7", "27.6")
    assert r["ResNet-34-pruned-C"].paper_params_pruned == "7.2" and r["ResNet-34"].paper_error == "26.77"
    assert [row.preset for row in t1 if row.preset] == [
        "vgg16-A",
        "resnet56-A",
        "resnet56-B",
        "resnet110-A",
        "resnet110-B",
        "resnet34-A",
        "resnet34-B",
        "resnet34-C",
    ]


def test_format_table1(t1):
    text = paper.format_table1()
    lines = text.splitlines()
    assert len(lines) == 1 + 2 + 12 + 1
    row = next(line for line in lines if line.startswith("ResNet-110-pruned-B"))
    assert row.split() == [
        "ResNet-110-pruned-B",
        "155,124,352",
        "1.55e8",
        "=",
        "38.66",
        "38.6",
        "+0.06",
        "1,161,722",
        "1.16e6",
        "=",
        "32.45",
        "32.4",
        "+0.05",
    ]
    assert "1.99e7 !" in text
    assert lines[-1] == f"convention: {paper.CONVENTION}"
    assert "no BN" in paper.CONVENTION and "projection" in paper.CONVENTION


def test_table2_per_layer():
    rows = paper.table2()
    assert [(r.macs, r.weights, r.maps_a, round(r.macs_pruned_a)) for r in rows] == TABLE2
    assert [r.name for r in rows] == [f"conv{i}" for i in range(1, 14)] + ["fc1", "fc2"]
    for r in rows:
        assert r.maps_a == r.paper_maps_a
        assert f"{r.macs_pruned_a:.0f}%" == r.paper_macs_pruned_a
        # Every printed FLOP and #params is ours at its printed precision (weights only, no biases).
        assert float(f"{r.macs:.1e}") == float(r.paper_macs), r.layer
        assert float(f"{r.weights:.1e}") == float(r.paper_params), r.layer
    assert (rows[0].hw, rows[10].hw, rows[13].hw) == ("32x32", "2x2", "1")
    assert sum(r.macs for r in rows) == 313_463_808 and sum(r.weights for r in rows) == 14_977_728


def test_format_table2():
    text = paper.format_table2()
    total = next(line for line in text.splitlines() if line.startswith("Total"))
    assert total.split() == ["Total", "313,463,808", "3.1E+08", "14,977,728", "1.5E+07", "34.19%", "34%"]
    assert "weights only" in text.splitlines()[-1]
