"""The latency table (cream_tf.latency): built for a tiny space and read back, the predictor as the
sum of its entries times the calibration networks' median ratio, `--mode=latency` end to end, and
the tables that cannot serve refused."""

from __future__ import annotations

import json
import logging
import math

import pytest

from cream_tf import commands, latency
from cream_tf.arch import Arch, SearchSpace
from cream_tf.candidates import OpSet

# Depth 3 in stage 3, where a skip may stand at the second and third blocks; one MBConv otherwise.
SPACE = SearchSpace.create(
    (1, 1, 3, 1, 1),
    input_size=16,
    in_channels=1,
    num_classes=10,
    stem_channels=8,
    stem_stride=1,
    ops=OpSet.from_strings(None, "k3_e4_nose+skip", None),
)
PIECES = 10  # stem, ds, each stage's first block, stage 3's later block, cn, head
# Whole networks, drawn as --mode=latency and a search draw them (every path is far under 100 MFLOPs).
CALIBRATION = latency.drawn_archs(SPACE, (0, math.inf), 2)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("latency") / "table.json"
    table = latency.LatencyTable.open(path, threads=1)
    # Two passes over every piece, the second timing the files the first converted and kept.
    keep, wanted = path.parent / "pieces", latency.pieces_of_space(SPACE) | CALIBRATION
    assert latency.measure_missing(table, wanted, ["float32"], 2, keep, rounds=3) == 2 * (PIECES + 2)
    assert len(list(keep.glob("float32_*.tflite"))) == PIECES + 2
    return path


def test_table_is_written_read_back_and_only_missing_blocks_are_measured(table_file):
    data = json.loads(table_file.read_text())
    assert data["format"] == "cream_tf.latency/1" and data["threads"] == 1, data
    assert data["runtime"] == latency.runtime() and data["device"].startswith("host: "), data
    entries = data["entries"]["float32"]
    assert len(entries) == PIECES and data["entries"]["int8"] == {}, sorted(entries)
    for key, stats in entries.items():
        assert 0 < stats["ms"] <= stats["median_ms"] <= stats["max_ms"] < 50 and stats["rounds"] == 3, (key, stats)
        assert stats["passes"] == 2, (key, stats)
    table = latency.LatencyTable.open(table_file, threads=1)
    assert table.entries["float32"] == entries
    assert sorted(data["calibration"]["float32"]) == sorted(CALIBRATION) and data["calibration"]["int8"] == {}
    assert table.calibration == data["calibration"]
    assert latency.measure_missing(table, latency.pieces_of_space(SPACE) | CALIBRATION, ["float32"]) == 0


def test_calibration_scales_the_sum_by_the_median_ratio_of_networks_at_its_input_size(table_file):
    table = latency.LatencyTable.open(table_file, threads=1)

    def summed(arch):
        return math.fsum(table.ms(latency.network_keys(arch), "float32"))

    # The fixture's networks, timed whole: each a little off the sum of its pieces timed alone.
    ratios = [stats["ms"] / summed(Arch.parse(key)) for key, stats in table.calibration["float32"].items()]
    assert len(ratios) == 2 and min(ratios) > 0.5 and max(ratios) < 2, ratios
    assert table.scale("float32", 16) == pytest.approx(sum(ratios) / 2)
    archs = [SPACE.arch(path) for path in ([0] * 7, [0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0])]
    table.calibration["float32"] = {str(a): {"ms": r * summed(a)} for a, r in zip(archs, (1.1, 1.4, 1.2))}
    arch = SPACE.arch([0, 0, 0, 0, 1, 0, 0])
    assert latency.predict_ms(arch, table, "float32") == pytest.approx(1.2 * summed(arch), rel=1e-12)
    assert latency.PathLatency(SPACE, table, "float32").ms([0, 0, 0, 0, 1, 0, 0]) == pytest.approx(1.2 * summed(arch))
    # Networks of another input size or precision calibrate nothing here.
    assert table.scale("float32", 32) == table.scale("int8", 16) == 1.0
    table.calibration["float32"] = {str(a.replace(input_size=32)): {"ms": 1.0} for a in archs}
    assert latency.predict_ms(arch, table, "float32") == pytest.approx(summed(arch), rel=1e-12)


@pytest.mark.parametrize("stage3", [(0, 0, 0), (0, 1, 0), (0, 1, 1)])
def test_prediction_is_the_sum_of_the_networks_entries_once_per_block(table_file, stage3):
    """Entries set to powers of 4: the prediction's base-4 digits count how often each entry was
    summed (up to 3 without a carry). Every block but a skip counts once, a shape that repeats
    (stage 3's later blocks) once per block, and the head once."""
    table = latency.LatencyTable.open(table_file, threads=1)
    keys = sorted(table.entries["float32"])
    table.entries["float32"] = {key: {"ms": 4.0**i} for i, key in enumerate(keys)}
    table.calibration["float32"] = {}  # the sum alone
    arch = SPACE.arch([0, 0, *stage3, 0, 0])
    predicted = int(latency.predict_ms(arch, table, "float32"))
    digits = [predicted // 4**i % 4 for i in range(len(keys))]
    later = stage3[1:].count(0)  # MBConvs after stage 3's first block (choice 1 is the skip)
    assert sum(digits) == 9 + later, (digits, arch)  # stem, ds, 5 first blocks, cn, head
    assert sorted(digits, reverse=True)[:2] == ([later, 1] if later > 1 else [1, 1]), digits
    assert predicted == sum(4**i * d for i, d in enumerate(digits))


def test_latency_mode_prints_the_prediction_and_the_whole_network_measured(table_file):
    arch = SPACE.arch([0, 0, 0, 1, 0, 0, 0])
    text = commands.latency(arch, latency_table=str(table_file), threads=1, calibration=2)
    table = latency.LatencyTable.open(table_file, 1)
    predicted, scale = latency.predict_ms(arch, table, "float32"), table.scale("float32", 16)
    assert f"predicted:    {predicted:.4f} ms (the sum of 10 table entries" in text, text
    assert f"times {scale:.3f}, the median of 2 calibration networks)" in text, text
    assert "0 measured now" in text, text
    measured = float(text.split("measured:")[1].split()[0])
    assert 0.5 * predicted < measured < 2 * predicted, text  # the same blocks, timed as one file


def test_tables_that_cannot_serve_are_refused_with_what_to_do(table_file, tmp_path, caplog):
    data = json.loads(table_file.read_text())
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(table_file.read_text()[:-20])
    with pytest.raises(latency.LatencyTableError, match="corrupt.json is not a readable latency table"):
        latency.LatencyTable.open(corrupt, 1)
    with pytest.raises(latency.LatencyTableError, match=r"measured with 1 thread\(s\), not the 2 asked for"):
        latency.LatencyTable.open(table_file, 2)
    older = tmp_path / "older.json"
    older.write_text(json.dumps({**data, "runtime": "ai-edge-litert 0.0.1"}))
    with pytest.raises(
        latency.LatencyTableError, match=f"ai-edge-litert 0.0.1, and this host runs {latency.runtime()}"
    ):
        latency.LatencyTable.open(older, 1)
    with caplog.at_level(logging.WARNING):
        refreshed = latency.LatencyTable.open(older, 1, refresh=True)
    assert refreshed.entries == {"float32": {}, "int8": {}} and refreshed.runtime == latency.runtime()
    assert "measuring it afresh" in caplog.text
    # A phone's table: another runtime is fine there, but this host cannot fill its gaps.
    phone = tmp_path / "phone.json"
    phone.write_text(json.dumps({**data, "runtime": "benchmark_model 2.16", "device": "adb: Pixel 8"}))
    table = latency.LatencyTable.open(phone, 1)
    other = SPACE.template.replace(num_classes=7)
    with pytest.raises(latency.LatencyTableError, match=r"no float32 entry for 1 block\(s\).*head-i320-h1280-c7"):
        latency.predict_ms(other, table, "float32")
    with pytest.raises(latency.LatencyTableError, match="measured on adb: Pixel 8; this host cannot add"):
        latency.measure_missing(table, latency.pieces(other), ["float32"])
    with pytest.raises(ValueError, match="precision must be one of float32, int8; got 'fp16'"):
        latency.predict_ms(SPACE.template, table, "fp16")


def test_board_breaks_ties_by_predicted_latency_in_a_latency_bounded_search():
    import numpy as np

    from cream_tf.search.board import Entry, PrioritizedBoard

    def entry(accuracy, macs, ms):
        return Entry((0,), accuracy, macs, np.zeros((1, 4, 4, 1)), np.zeros((1, 10)), ms)

    for by_latency, admitted in ((True, True), (False, False)):
        board = PrioritizedBoard(1, accuracy_gap=5.0, by_latency=by_latency)
        board.offer(entry(50.0, 10, 2.0))
        # Better by less than the gap: enters only when cheaper, which it is in ms, not in FLOPs.
        assert board.offer(entry(51.0, 20, 1.0)) is admitted


TINY_SEARCH = """
data: {name: fashion_mnist, image_size: 16, channels: 1, num_classes: 10, validation_size: 256, batch_size: 32}
space:
  flops_max: 100
  depths: [1, 1, 3, 1, 1]
  stem_stride: 1
  stem_channels: 8
  candidates: [{kind: mbconv, kernel: 3, expansion: 4, se: 0}, {kind: skip}]
cream: {pick_method: none, board_size: 2, warmup_epochs: 1, prior: []}
train: {epochs: 2, steps_per_epoch: 4, lr: 0.05}
selection: {recalibrate_batches: 2, eval_batches: 2, export_paths: winner}
"""


def test_a_latency_bounded_search_samples_inside_the_bound_and_records_latency(table_file, tmp_path):
    """Bounded below the slowest paths' prediction: every sampled path is predicted inside the
    bound, the slowest are never drawn, and the winner's entry records its predicted latency and
    its whole network measured."""
    import tensorflow as tf

    from cream_tf import config as config_lib
    from cream_tf.search.run import SearchRun

    table = latency.LatencyTable.open(table_file, 1)
    paths = [SPACE.arch([0, 0, 0, a, b, 0, 0]) for a in (0, 1) for b in (0, 1)]
    predicted = sorted(latency.predict_ms(arch, table, "float32") for arch in paths)
    bound = [0.0, (predicted[-2] + predicted[-1]) / 2]  # all but the path without a skip
    (tmp_path / "tiny.yaml").write_text(TINY_SEARCH)
    override = f"space.latency_ms=[0, {bound[1]}],space.latency_table={table_file},space.latency_calibration=2"
    search = SearchRun(
        config_lib.load(config_lib.SearchConfig, str(tmp_path / "tiny.yaml"), override),
        tmp_path / "run",
        strategy=tf.distribute.get_strategy(),
    )
    result = search.run()
    sampled = [step[4] for step in search.history]
    assert len(sampled) == 8 and all(0 < ms <= bound[1] for ms in sampled), (sampled, bound)
    assert max(sampled) == pytest.approx(predicted[-2], rel=1e-4)  # the paths with one skip are drawn
    assert result["space"]["latency_range_ms"] == pytest.approx(bound)
    assert result["space"]["latency"]["table"] == str(table_file)
    assert result["space"]["latency"]["calibration_scale"] == round(table.scale("float32", 16), 4)
    winner = result["winner"]
    assert 0 < winner["latency_ms"] <= bound[1] and winner["measured_latency_ms"] > 0, winner
    metadata = json.loads((tmp_path / "run" / winner["entry"] / "metadata.json").read_text())
    assert metadata["latency"]["predicted_ms"] == winner["latency_ms"], metadata["latency"]
    assert metadata["latency"]["measured_ms"] == winner["measured_latency_ms"]
    assert metadata["latency"]["precision"] == "float32" and metadata["latency"]["threads"] == 1


def test_a_devices_timings_become_a_table(tmp_path):
    """The host's halves of scripts/latency_adb.sh: the space's pieces as TFLite files with a
    manifest, then benchmark_model's microseconds per file made into a table the search reads."""
    manifest = latency.write_pieces(SPACE, tmp_path / "pieces", ["float32"], CALIBRATION)
    items = json.loads(manifest.read_text())
    assert len(items) == PIECES + 2 and all((tmp_path / "pieces" / item["file"]).stat().st_size > 0 for item in items)
    timings = tmp_path / "timings.txt"
    timings.write_text("".join(f"{item['file']} {100.0 * (n + 1)} 5 200\n" for n, item in enumerate(items)))
    phone = tmp_path / "phone.json"
    flags = [f"--manifest={manifest}", f"--timings={timings}", f"--out={phone}", "--threads=1"]
    latency.main(["table", *flags, "--device=adb: Pixel 8", "--runtime=benchmark_model 2.16"])
    table = latency.LatencyTable.open(phone, 1)
    assert table.device == "adb: Pixel 8" and table.runtime == "benchmark_model 2.16"
    figures = {**table.entries["float32"], **table.calibration["float32"]}
    assert {k: v["ms"] for k, v in figures.items()} == pytest.approx(
        {item["key"]: 0.1 * (n + 1) for n, item in enumerate(items)}
    )
    assert sorted(table.calibration["float32"]) == sorted(CALIBRATION) and len(table.entries["float32"]) == PIECES
    latency.PathLatency(SPACE, table, "float32")  # every piece of the space is there
    timings.write_text(f"{items[0]['file']} 12.5\n")
    with pytest.raises(ValueError, match=r"timings.txt line 1 .* is not 'FILE AVG_US STD_US RUNS'"):
        latency.main(["table", *flags, "--device=adb: Pixel 8", "--runtime=benchmark_model 2.16"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("space.latency_ms=[2, 1]", r"space.latency_ms=\(2.0, 1.0\) is not valid; valid: \[\] \(no latency bound\)"),
        ("space.latency_ms=[1]", r"space.latency_ms=\(1.0,\) is not valid"),
        ("space.latency_precision=fp16", "space.latency_precision='fp16' is not valid; valid: float32 or int8"),
        ("space.latency_threads=0", "space.latency_threads=0 is not valid; valid: an integer >= 1"),
        ("space.latency_calibration=-1", "space.latency_calibration=-1 is not valid; valid: an integer >= 0"),
    ],
)
def test_bad_latency_settings_are_refused_naming_the_value(tmp_path, override, message):
    from cream_tf import config as config_lib

    (tmp_path / "tiny.yaml").write_text(TINY_SEARCH)
    with pytest.raises(ValueError, match=message):
        config_lib.load(config_lib.SearchConfig, str(tmp_path / "tiny.yaml"), override).validate()


def test_a_latency_bound_no_path_meets_is_refused_with_the_reachable_range(table_file):
    from cream_tf.search.sampler import PathSampler

    predictor = latency.PathLatency(SPACE, latency.LatencyTable.open(table_file, 1), "float32")
    fastest, slowest = predictor.range()
    assert fastest < slowest
    with pytest.raises(ValueError, match=rf"latency range \[0, {fastest / 2:g}\] ms: its paths are predicted at"):
        PathSampler(SPACE, (0, 1e6), latency=predictor, latency_range=(0, fastest / 2))
