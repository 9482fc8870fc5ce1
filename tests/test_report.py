"""The ablation table and plot built from `dvc exp show --json`."""

from clapart_core.scoring.report import collect_rows, read_notes, to_markdown, write_csv, write_layers_svg


def _notes(rev, scores_file):
    """Side files of the fake runs: 60 test clips in the main phase, 1045 in the fine-tune."""
    return {"n_clips": 1045 if "finetune" in scores_file else 60, "baseline_cider_d": 0.5}


def _rvq(rev, scores_file):
    """metrics/rvq.json of the fake runs: the codebooks' relative error on the training split."""
    return {"relative_error": 0.25}


def _run(name, etype, layers, clap, cider, spider=None, size=256, generate=None):
    params = {"encoder": {"type": etype}, "rvq": {"layers": layers, "codebook_size": size}, "model": {"use_clap": clap}}
    return {
        "rev": name * 3,
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": {**params, **({"generate": generate} if generate else {})}}},
            "metrics": {
                "metrics/scores.json": {"data": {"cider_d": cider, "spider": spider, "bleu_4": 0.1}},
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
            {"revs": [_run("hub", "hubert_rvq", 16, True, 0.8)]},
            {"revs": [_run("st", "speechtokenizer", 16, True, 0.6, size=1024)]},
            {"revs": [_run("old", "wav2vec", 16, True, 0.5)]},  # a type this version does not know
            {"revs": [{"rev": "f" * 40, "name": "failed", "data": {"params": {}, "metrics": {}}}]},
        ],
    },
]


def test_rows_dedupe_and_ignore_rvq_params_for_other_types(tmp_path):
    rows = collect_rows(EXP_SHOW, notes=_notes, rvq_report=_rvq)
    assert [r["run"] for r in rows] == ["workspace", "l8", "l1", "noclap", "enc", "hub", "st", "old"]
    by_run = {r["run"]: r for r in rows}
    # rvq.* applies to the types whose codes come from the codebooks, and to no other
    for run in ("enc", "st", "old"):
        assert by_run[run]["rvq.layers"] is None and by_run[run]["rvq.codebook_size"] is None, run
    assert (by_run["hub"]["rvq.layers"], by_run["hub"]["rvq.codebook_size"]) == (16, 256)
    assert (by_run["l8"]["rvq.layers"], by_run["l8"]["rvq.codebook_size"]) == (8, 256)
    md = to_markdown(rows)
    assert md.count("\n") == len(rows) + 2 and "| l8 | main | – | True | beats_rvq | 8 | 256 | train split | 0.2500 | True | none | – | 1.1000 |" in md
    assert "| st | main | – | True | speechtokenizer | – | – | – | – | True | none | – | 0.6000 |" in md
    write_csv(rows, tmp_path / "r.csv")
    header = "run,phase,epoch,selected,encoder.type,rvq.layers,rvq.codebook_size,codebook_corpus,rvq_error,model.use_clap,rerank,spider"
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith(header)


def test_plot_uses_cider_without_spice_and_draws_each_clap_setting(tmp_path):
    rows = collect_rows(EXP_SHOW)
    metric = write_layers_svg(rows, tmp_path / "p.svg")
    svg = (tmp_path / "p.svg").read_text()
    assert metric == "cider_d" and "with CLAP" in svg and "without CLAP" in svg
    # l1, l8, l16 with CLAP and l16 without (beats_rvq); hubert_rvq's l16 with CLAP: its own line
    assert svg.count("<circle") == 5 and svg.count("<path") == 3
    assert "beats_rvq, with CLAP" in svg and "hubert_rvq, with CLAP" in svg and "K=" not in svg
    rows[0]["spider"] = 0.5
    assert write_layers_svg(rows, tmp_path / "q.svg") == "spider"


def test_finetune_phases_get_their_own_rows():
    run = _run("paper", "beats_rvq", 16, True, 1.3)
    run["data"]["metrics"]["metrics/finetune/clotho/scores.json"] = {"data": {"cider_d": 0.5}}
    rows = collect_rows([{**run, "experiments": None}], notes=_notes)
    assert [(r["run"], r["phase"], r["cider_d"], r["n_clips"]) for r in rows] == [
        ("paper", "main", 1.3, 60), ("paper", "finetune/clotho", 0.5, 1045)
    ]
    assert rows[1]["encoder.type"] == "beats_rvq" and rows[1]["n_clips"] == 1045


def test_notes_come_from_the_side_file_of_each_run(tmp_path, monkeypatch):
    """The workspace reads metrics/scores_notes.json from disk; a run without one gets empty cells."""
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/scores_notes.json").write_text('{"n_clips": 60, "baseline_cider_d": 0.52}')
    monkeypatch.chdir(tmp_path)
    rows = collect_rows([{**_run("workspace", "beats_rvq", 16, True, 1.3), "rev": "workspace", "experiments": None}])
    assert (rows[0]["n_clips"], rows[0]["baseline_cider_d"]) == (60, 0.52)
    assert read_notes("f" * 40, "metrics/scores.json", cwd=tmp_path) == {}  # not a git repository: no notes


def test_kept_epochs_are_rows_after_their_runs_selected_epoch(tmp_path):
    """scores_epochs.json beside a run's scores: the selected epoch is the run's row (column epoch), each
    other kept epoch one more row with its test scores; the plot uses the selected rows only."""

    def epochs(rev, scores_file):
        if "finetune" in scores_file:
            return {}
        return {
            "selected_epoch": 5,
            "epochs": [
                {"epoch": 5, "selected": True, "val": {"cider_d": 0.9}, "test": {"cider_d": 1.3}},
                {"epoch": 3, "selected": False, "val": {"cider_d": 0.8}, "test": {"cider_d": 1.4, "bleu_4": 0.2}},
            ],
        }

    run = _run("paper", "beats_rvq", 16, True, 1.3)
    run["data"]["metrics"]["metrics/finetune/clotho/scores.json"] = {"data": {"cider_d": 0.5}}
    rows = collect_rows([{**run, "experiments": None}], notes=_notes, epochs=epochs, rvq_report=_rvq)
    assert [(r["phase"], r["epoch"], r["selected"], r["cider_d"], r["bleu_4"], r["n_clips"]) for r in rows] == [
        ("main", 5, True, 1.3, 0.1, 60), ("main", 3, False, 1.4, 0.2, 60), ("finetune/clotho", None, True, 0.5, None, 1045)
    ]
    assert "| paper | main | 3 | False | beats_rvq | 16 | 256 | train split | 0.2500 | True | none | – | 1.4000 |" in to_markdown(rows)
    write_layers_svg([r for r in rows if r["phase"] == "main"], tmp_path / "p.svg")  # as `clapart results --plot` does
    assert (tmp_path / "p.svg").read_text().count("<circle") == 1  # epoch 5's, not epoch 3's


def test_codebook_size_ablation_rows_and_lines(tmp_path):
    """The codebook-size recipe (rvq.codebook_size = 256 / 512 / 1024 at fixed depth): one row each,
    and the plot keeps each size on its own line."""
    runs = [_run(f"k{k}", "beats_rvq", n, True, 1.0 + k / 1e4 + n / 100, size=k) for k in (256, 512, 1024) for n in (4, 16)]
    rows = collect_rows([{**runs[0], "experiments": [{"revs": [r]} for r in runs[1:]]}], notes=_notes)
    assert [(r["rvq.codebook_size"], r["rvq.layers"]) for r in rows] == [(k, n) for k in (256, 512, 1024) for n in (4, 16)]
    write_layers_svg(rows, tmp_path / "k.svg")
    svg = (tmp_path / "k.svg").read_text()
    assert svg.count("<path") == 3 and all(f"K={k}, with CLAP" in svg for k in (256, 512, 1024))


def test_codebook_corpus_column_names_where_the_codebooks_come_from():
    """One row per source of codebooks (the issue-15 sensitivity): the training split, another corpus,
    a codebook file; each with its codebooks' error on the training split (metrics/rvq.json)."""
    here = _run("here", "beats_rvq", 16, True, 1.3)
    other = _run("other", "beats_rvq", 16, True, 1.2)
    other["data"]["params"]["params.yaml"]["data"]["codebook_corpus"] = {"source": "folder", "root": "/corpora/b"}
    file = _run("file", "beats_rvq", 16, True, 1.1)
    file["data"]["params"]["params.yaml"]["data"]["rvq"]["codebooks_file"] = "pub/rvq.npz"
    enc = _run("enc", "encodec", 16, True, 0.9)
    errors = {"here" * 3: 0.2, "other" * 3: 0.3, "file" * 3: 0.35}
    rows = collect_rows([{**here, "experiments": [{"revs": [r]} for r in (other, file, enc)]}], notes=_notes,
                        rvq_report=lambda rev, _f: {"relative_error": errors[rev]} if rev in errors else {})
    assert [(r["run"], r["codebook_corpus"], r["rvq_error"]) for r in rows] == [
        ("here", "train split", 0.2), ("other", "folder:/corpora/b", 0.3), ("file", "file:pub/rvq.npz", 0.35), ("enc", None, None)
    ]


def test_the_rerank_column_names_the_reranking_and_gets_its_own_plot_line(tmp_path):
    plain = {"rerank": "none", "candidates": 50, "sampling": "nucleus", "rerank_weight": 0.3}
    runs = [
        _run("beam", "beats_rvq", 16, True, 1.3, generate=plain),
        _run("hyb", "beats_rvq", 16, True, 1.4, generate={**plain, "rerank": "hybrid"}),
        _run("clp", "beats_rvq", 16, True, 1.2, generate={**plain, "rerank": "clap", "candidates": 8, "sampling": "beam"}),
    ]
    rows = collect_rows([{**runs[0], "experiments": [{"revs": runs[1:]}]}], notes=_notes)
    assert [(r["run"], r["rerank"]) for r in rows] == [("beam", "none"), ("hyb", "hybrid 0.3, 50 nucleus"), ("clp", "clap 8 beam")]
    write_layers_svg(rows, tmp_path / "p.svg")
    svg = (tmp_path / "p.svg").read_text()
    assert "with CLAP, rerank none" in svg and "with CLAP, rerank hybrid 0.3, 50 nucleus" in svg
