"""Choosing the search's result: every board path evaluated on held-out data, the best exported.

Selection never reads the test split; the winner's test accuracy is reported, not used. By
default it exports the winner and the rest of the Pareto front (selection.export_paths): the
winner is what a user retrains, the front what they choose among when they need fewer FLOPs. A
path off the front is matched or beaten on held-out top-1 by one with no more FLOPs, and an
export costs about 7 s of CPU on the default search (SavedModel and TFLite conversion).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from absl import logging

from cream_tf import atomic, data, evaluate, folders
from cream_tf.batchnorm import Recalibrator, batch_norms
from cream_tf.export import write_entry
from cream_tf.flops import cost_of


class PathEvaluator:
    """Held-out top-1 of board paths, computed on the supernet itself.

    One traced recalibration and one traced prediction serve every path (the path is a
    tensor), where a child net per path would be built and traced anew. Recalibration
    overwrites the BatchNorm statistics of the path's blocks and of the shared ones, so a
    child extracted right after a path's evaluation inherits that path's own statistics.
    """

    def __init__(self, supernet, calibration: list):
        """calibration: training image batches to recompute statistics on; empty keeps them."""
        self.calibration = calibration
        norms = batch_norms(layer for block in supernet.blocks for layer in block.parts)
        self.recalibrator = Recalibrator(lambda images, path: supernet(images, path, training=True), norms)
        self._predict = tf.function(lambda images, path: supernet(images, path, training=False))

    def recalibrate(self, path) -> None:
        """Every BatchNorm's moving statistics become their mean over the calibration batches."""
        self.recalibrator.recalibrate(self.calibration, tf.constant(path, tf.int32))

    def top1(self, path, dataset, max_batches: int = 0) -> float:
        self.recalibrate(path)
        path = tf.constant(path, tf.int32)
        return evaluate.accuracy(lambda images: self._predict(images, path).numpy(), dataset, max_batches)["top1"]


def board_row(space, rank: int, entry) -> dict:
    """A board entry as board.json and search_result.json write it (with its predicted latency in
    a latency-bounded search)."""
    latency = {} if entry.latency_ms is None else {"latency_ms": round(entry.latency_ms, 4)}
    return {
        "board_rank": rank,
        "path": space.arch(list(entry.path)).path,
        "mflops": round(entry.macs / 1e6, 3),
        **latency,
        "train_top1": round(entry.accuracy, 3),
    }


def cost_key(config) -> str:
    """What makes a path cheaper in ties and on the front: predicted latency when the search is
    bounded by it, FLOPs otherwise."""
    return "latency_ms" if config.space.latency_ms else "mflops"


def pareto_front(rows: list[dict], cost: str = "mflops") -> list[dict]:
    """The board rows no cheaper (or equally cheap) row is as accurate as on the held-out split,
    cheapest first. The winner (best `val_top1`, ties: the cheaper) is always on it."""
    cheapest_first = sorted(rows, key=lambda r: (r[cost], -r["val_top1"]))
    return [r for i, r in enumerate(cheapest_first) if all(r["val_top1"] > q["val_top1"] for q in cheapest_first[:i])]


def ranks_to_export(rows: list[dict], best: int, export_paths: str, cost: str = "mflops") -> list[int]:
    """The `board_rank`s selection.export_paths names (config.EXPORT_PATHS), in board order."""
    if export_paths == "all":
        return [row["board_rank"] for row in rows]
    chosen = {rows[best]["board_rank"]}
    if export_paths == "pareto":
        chosen |= {row["board_rank"] for row in pareto_front(rows, cost)}
    return sorted(chosen)


def select_and_export(search) -> dict:
    config = search.config
    selection = config.selection
    calibration = (
        [images for images, _ in data.load(config.data, "train", training=False).take(selection.recalibrate_batches)]
        if selection.recalibrate_bn
        else []
    )
    evaluator = PathEvaluator(search.supernet, calibration)
    validation = data.load(config.data, "validation", training=False)
    rows, models = [], []
    logging.info(
        "Selection: %d board paths, each scored on the held-out split with BatchNorm %s.",
        len(search.board.entries),
        f"recomputed on {len(calibration)} training batches" if calibration else "as trained",
    )
    for rank, entry in enumerate(search.board.entries):
        accuracy = evaluator.top1(entry.path, validation, selection.eval_batches)
        child = search.supernet.extract_child(entry.path, name="cream_child")
        arch = search.space.arch(list(entry.path))
        rows.append(
            {**board_row(search.space, rank, entry), "arch": str(arch), "params": cost_of(arch).params}
            | {"val_top1": round(accuracy, 3)}
        )
        models.append((child, arch))
        predicted = "" if entry.latency_ms is None else f", {entry.latency_ms:.4f} ms predicted"
        logging.info(
            "board path %d %s: %.2f MFLOPs%s, held-out top-1 %.2f%%",
            rank,
            arch.path,
            entry.macs / 1e6,
            predicted,
            accuracy,
        )
    cost = cost_key(config)
    result = {
        "space": {
            "depths": list(search.space.depths),
            "template": str(search.space.template),
            "flops_range_mflops": [config.space.flops_min, config.space.flops_max],
            **latency_settings(search),
        },
        "pick_method": config.cream.pick_method,
        "board": rows,
        "winner": None,
    }
    if not rows:
        logging.warning("The board is empty (did the search end before its warm-up epochs?): nothing to select.")
        return result
    # Every board path lies in the FLOPs (and latency) range already: the sampler only proposes such paths.
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_top1"], -rows[i][cost]))
    test = evaluator.top1(search.board.entries[best].path, data.load(config.data, "test", training=False))
    result["winner"] = dict(rows[best], test_top1=round(test, 3))
    front = {row["board_rank"] for row in pareto_front(rows, cost)}
    exported = ranks_to_export(rows, best, selection.export_paths, cost) if selection.export else []
    skipped = [row["board_rank"] for row in rows if row["board_rank"] not in exported]
    if selection.export and skipped:
        logging.info(
            "Exporting %d of %d board paths (selection.export_paths=%s); not board paths %s "
            "(selection.export_paths=all exports every one).",
            len(exported),
            len(rows),
            selection.export_paths,
            ", ".join(map(str, skipped)),
        )
    for row, (child, arch) in zip(rows, models):
        row["winner"] = row["board_rank"] == best
        row["pareto"] = row["board_rank"] in front
        if row["board_rank"] in exported:
            folder = search.model_dir / folders.SEARCH_ZOO_DIR / f"board_{row['board_rank']:02d}"
            role = " (the winner)" if row["winner"] else " (Pareto front)" if row["pareto"] else ""
            logging.info("Exporting board path %d%s to %s", row["board_rank"], role, folder)
            latency = measured_latency(search, arch, row["latency_ms"]) if "latency_ms" in row else None
            if latency:
                row["measured_latency_ms"] = latency["measured_ms"]
            write_entry(
                child,
                arch,
                folder,
                overwrite=True,
                weights_source=f"inherited from the supernet in {search.model_dir} (BatchNorm "
                f"{'recalibrated' if config.selection.recalibrate_bn else 'as trained'})",
                produced_by="search",
                data_config=config.data,
                measure=False,  # the board's paths are measured on held-out data above
                extra_metadata={"search": row, **({"latency": latency} if latency else {})},
            )
            row["entry"] = str(folder.relative_to(search.model_dir))  # within model_dir, wherever that moves
    result["winner"].update((k, rows[best][k]) for k in ("entry", "measured_latency_ms") if k in rows[best])
    png = plot(search, rows, best)
    winner = result["winner"]
    search.scalars(
        search.step,
        {
            "result/val_top1": winner["val_top1"],
            "result/test_top1": winner["test_top1"],
            "result/mflops": winner["mflops"],
        },
    )
    search.image(search.step, "result/search_plot", png)
    return result


def latency_settings(search) -> dict:
    """How a latency-bounded search predicts latency: its range and the table it reads."""
    predictor = search.sampler.latency
    if predictor is None:
        return {}
    table = predictor.table
    return {
        "latency_range_ms": list(search.config.space.latency_ms),
        "latency": {"precision": predictor.precision, "threads": table.threads, "table": str(table.path)}
        | {"runtime": table.runtime, "device": table.device, "calibration_scale": round(predictor.scale, 4)},
    }


def measured_latency(search, arch, predicted_ms: float) -> dict:
    """An exported path's latency: predicted from the table, and its whole network measured on this
    host, converted and timed as the table's blocks are (cream_tf.latency)."""
    from cream_tf import latency

    settings = latency_settings(search)["latency"]
    measured = latency.measure_network(arch, settings["precision"], settings["threads"])
    host = {"measured_on": latency.host_device(), "measured_runtime": latency.runtime()}
    return {"predicted_ms": predicted_ms, "measured_ms": round(measured["ms"], 4), **host, **settings}


def plot(search, rows, best) -> bytes:
    """The search on two panels against FLOPs (predicted latency in a latency-bounded search), the
    limits dashed on both. Left: the board's paths at their held-out top-1, named as their zoo
    entries, the Pareto front (no cheaper path is as accurate) and the winner. Right: every sampled
    path's top-1 on its training batch, coloured by epoch (warm-up included), which is noisy and not
    comparable with held-out top-1.
    Written to search_plot.png; returns the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    cost = cost_key(search.config)
    if cost == "latency_ms":
        (low, high), unit, label = search.config.space.latency_ms, "ms", "predicted latency (ms, LiteRT)"
    else:
        low, high, unit, label = (
            search.config.space.flops_min,
            search.config.space.flops_max,
            "M",
            "MFLOPs (multiply-adds)",
        )
    figure, (board, sampled) = pyplot.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    for axes in (board, sampled):
        for limit in (low, high) if low > 0 else (high,):
            axes.axvline(limit, color="tab:red", linestyle="--", linewidth=1, label=f"limit {limit:g} {unit}")
        axes.set_xlabel(label)
    costs, top1 = [r[cost] for r in rows], [r["val_top1"] for r in rows]
    board.scatter(costs, top1, s=30, color="tab:blue", label="board paths")
    for row in rows:
        board.annotate(
            f"board_{row['board_rank']:02d}",
            (row[cost], row["val_top1"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    front = pareto_front(rows, cost)
    board.step(
        [r[cost] for r in front],
        [r["val_top1"] for r in front],
        where="post",
        color="tab:blue",
        alpha=0.5,
        label="Pareto front",
    )
    board.scatter(
        [costs[best]],
        [top1[best]],
        s=180,
        marker="*",
        color="tab:red",
        zorder=3,
        label=f"selected: board_{rows[best]['board_rank']:02d}",
    )
    board.set_ylabel("held-out top-1 (%)")
    board.set_title("Board paths, held-out split")
    board.legend(loc="best", fontsize=8, framealpha=0.7)
    if search.history:
        history = np.asarray(search.history, dtype=np.float64)
        epoch = 1 + np.arange(len(history)) // search.steps_per_epoch
        x = history[:, 4] if cost == "latency_ms" else history[:, 0] / 1e6
        points = sampled.scatter(x, history[:, 1], s=4, alpha=0.4, c=epoch, cmap="viridis")
        figure.colorbar(points, ax=sampled, label="epoch")
    sampled.set_ylabel("training-batch top-1 (%)")
    sampled.set_title(f"{len(search.history)} sampled paths, one per step")
    sampled.legend(loc="upper left", fontsize=8, framealpha=0.7)
    figure.suptitle(f"Cream search ({search.config.cream.pick_method}): {search.model_dir}", fontsize=10)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    atomic.write_bytes(search.model_dir / folders.SEARCH_PLOT_FILE, buffer.getvalue())
    return buffer.getvalue()
