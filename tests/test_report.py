"""The ablation table and plot built from `dvc exp show --json`."""

from clapart_core.scoring.report import collect_rows, to_markdown, write_csv, write_layers_svg


def _run(name, etype, layers, clap, cider, spider=None):
    return {
        "rev": name * 3,
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": {"encoder": {"type": etype}, "rvq": {"layers": layers}, "model": {"use_clap": clap}}}},
            "metrics": {
                "metrics/scores.json": {"data": {"cider_d": cider, "spider": spider, "bleu_4": 0.1, "n_clips": 60}},
                "metrics/decode.json": {"data": {"n_skipped": 0}},  # not a scores file: no row
            },
        },
    }


EXP_SHOW = [
    {**_run("workspace", "beats_rvq", 16, True, 1.3), "experiments": None},
    {
        **_run("main", "beats_rvq", 16, True, 1.3),
        "experiments": [
            {"revs": [_run("l8", "beats_rvq", 8, True, 1.1)]},
            {"revs": [_run("l1", "beats_rvq", 1, True, 0.7)]},
            {"revs": [_run("noclap", "beats_rvq", 16, False, 1.2)]},
            {"revs": [_run("enc", "encodec", 16, True, 0.9)]},
            {"revs": [{"rev": "f" * 40, "name": "failed", "data": {"params": {}, "metrics": {}}}]},
        ],
    },
]


def test_rows_dedupe_and_ignore_rvq_layers_for_other_types(tmp_path):
    rows = collect_rows(EXP_SHOW)
    assert [r["run"] for r in rows] == ["workspace", "l8", "l1", "noclap", "enc"]
    enc = rows[-1]
    assert enc["encoder.type"] == "encodec" and enc["rvq.layers"] is None
    md = to_markdown(rows)
    assert md.count("\n") == len(rows) + 2 and "| l8 | main | beats_rvq | 8 | True | – | 1.1000 |" in md
    write_csv(rows, tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("run,phase,encoder.type,rvq.layers")


def test_plot_uses_cider_without_spice_and_draws_each_clap_setting(tmp_path):
    rows = collect_rows(EXP_SHOW)
    metric = write_layers_svg(rows, tmp_path / "p.svg")
    svg = (tmp_path / "p.svg").read_text()
    assert metric == "cider_d" and "with CLAP" in svg and "without CLAP" in svg
    assert svg.count("<circle") == 4  # l1, l8, l16 with CLAP; l16 without
    rows[0]["spider"] = 0.5
    assert write_layers_svg(rows, tmp_path / "q.svg") == "spider"


def test_finetune_phases_get_their_own_rows():
    run = _run("paper", "beats_rvq", 16, True, 1.3)
    run["data"]["metrics"]["metrics/finetune/clotho/scores.json"] = {"data": {"cider_d": 0.5, "n_clips": 1045}}
    rows = collect_rows([{**run, "experiments": None}])
    assert [(r["run"], r["phase"], r["cider_d"]) for r in rows] == [("paper", "main", 1.3), ("paper", "finetune/clotho", 0.5)]
    assert rows[1]["encoder.type"] == "beats_rvq" and rows[1]["n_clips"] == 1045
