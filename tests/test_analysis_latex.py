"""Every LaTeX table of the test reports compiles in a two-column paper (CVPR geometry: 237 pt columns) at its
natural width with no overfull box: a ``table`` fits ``\\columnwidth``, a ``table*`` the text width (issue 18).
Skipped with the reason where no pdflatex is installed (CI installs it: ``.ci/run``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from types import SimpleNamespace
from pathlib import Path

import pytest
from analysis_fixtures import ablation_trials, make_trial, search_with_confirm, write_experiment

from analysis.paired import build_compare
from analysis.report import build_report

PDFLATEX = shutil.which("pdflatex")
needs_latex = pytest.mark.skipif(
    PDFLATEX is None, reason="pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended "
                             "texlive-science; .ci/run does it where it can)")

PREAMBLE = r"""\documentclass[10pt,twocolumn,letterpaper]{article}
\usepackage[letterpaper,textwidth=6.875in,columnsep=0.3125in,textheight=9in,top=1in]{geometry}
\usepackage{booktabs,array,amssymb,amsmath,graphicx}
\begin{document}
\typeout{COLUMNWIDTH=\the\columnwidth}
"""
SAFETY_NET = "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n"


def natural(tex: str) -> str:
    """The table without its shrink-to-fit safety net: what must fit by itself."""
    assert tex.count(SAFETY_NET) == 1
    return tex.replace(SAFETY_NET, "").replace("\\end{tabular}}\n", "\\end{tabular}\n")


def compile_tables(paths: list[Path], work: Path) -> str:
    work.mkdir(parents=True, exist_ok=True)
    body = []
    for i, p in enumerate(paths):
        (work / f"t{i}.tex").write_text(natural(p.read_text()))
        body.append(f"\\typeout{{TABLE={p.name}}}\\input{{t{i}.tex}}\\clearpage")
    (work / "doc.tex").write_text(PREAMBLE + "\n".join(body) + "\n\\end{document}\n")
    proc = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    log = (work / "doc.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    return log


def overfull(log: str) -> list[str]:
    """'<table file>: Overfull \\hbox (...)' for every overfull box, named by the table it is in."""
    out, current = [], "?"
    for line in log.splitlines():
        m = re.match(r"TABLE=(.*)", line)
        if m:
            current = m.group(1)
        if "Overfull \\hbox" in line:
            out.append(f"{current}: {line}")
    return out


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("latex")
    from lucir.config import LADDER

    out = []
    abl = write_experiment(root / "digits_ablation", ablation_trials(seeds=tuple(range(6)), presets=tuple(LADDER),
                                                                     phase_counts=(2, 3)), name="digits_ablation")
    out.append(build_report(abl, formats=("tex",), mlflow=False, echo=lambda *_: None))
    srch = search_with_confirm(root / "digits_search", name="digits_search")
    out.append(build_report(srch, formats=("tex",), mlflow=False, echo=lambda *_: None))
    cifar = [make_trial(f"{p}_{ph}_{s}", preset=p, phases=ph, seed=s, dataset="cifar100", base=50, epochs=1,
                        acc=7.0 + 3 * i + s) for i, p in enumerate(("baseline", "cn", "lucir", "lucir_cbf"))
             for ph in (5, 10) for s in range(3)]
    cif = write_experiment(root / "cifar_reduced", cifar, name="cifar_reduced")
    out.append(build_report(cif, formats=("tex",), mlflow=False, echo=lambda *_: None))
    full = [make_trial(f"l{ph}_{s}", preset="lucir", phases=ph, seed=s, dataset="cifar100", base=50, epochs=160,
                       acc=62.0 + s) for ph in (5, 10) for s in range(3)]
    pub = write_experiment(root / "cifar_full", full, name="cifar_full")
    out.append(build_report(pub, formats=("tex",), mlflow=False, echo=lambda *_: None))
    assert (pub / "report" / "tables" / "scoreboard.tex").is_file()           # the published protocol: compared
    orders = [make_trial(f"{p}_o{o}_s{s}", preset=p, seed=s, class_order_seed=o, acc=60.0 + 2 * i + s + 0.5 * j)
              for i, p in enumerate(("cn", "lucir")) for j, o in enumerate((1993, 7)) for s in range(3)]
    var = write_experiment(root / "digits_orders", orders, name="digits_orders")
    out.append(build_report(var, formats=("tex",), mlflow=False, echo=lambda *_: None))
    assert (var / "report" / "tables" / "variance_split.tex").is_file()      # seeds x class orders: split
    compare = build_compare(abl, var, root / "compare", formats=("tex",), echo=lambda *_: None).parent
    out.append(SimpleNamespace(tables=[compare / "compare.tex"]))           # `lucir report --compare`
    return out


@needs_latex
def test_every_table_compiles_at_its_width_in_a_two_column_paper(reports, tmp_path):
    texs = [p for r in reports for p in r.tables if p.suffix == ".tex"]
    assert len(texs) >= 15
    log = compile_tables(texs, tmp_path / "doc")
    assert "COLUMNWIDTH=237.1" in log                                        # the CVPR column
    assert overfull(log) == []


def test_tables_paste_math_minus_escaped_less_than_labels_by_experiment(reports):
    texs = {p.name: p.read_text() for r in reports for p in r.tables if p.suffix == ".tex"}
    labels = [m for t in texs.values() for m in re.findall(r"\\label\{([^}]*)\}", t)]
    assert len(labels) == len(set(labels))                                    # unique across the three reports
    assert all(lab.startswith(("tab:digits-ablation-", "tab:digits-search-", "tab:cifar-reduced-", "tab:cifar-full-",
                                "tab:digits-orders-", "tab:compare")) for lab in labels), labels
    for name, t in texs.items():
        assert all(ord(c) < 128 for c in t), name                            # no raw unicode (OT1 mangles it)
        body = t.split("\\midrule", 1)[-1]
        text = re.sub(r"\$[^$]*\$", "", body)                                # outside math mode ...
        assert not re.search(r"(?<![\w-])-\d", text), name                  # ... no hyphen as a minus sign
        assert "<" not in t.replace("$<$", ""), name
        assert "lucir_experiment" not in t and "phase_seconds" not in t, name  # a paper's words
    paired = next(t for n, t in texs.items() if n == "paired_lucir.tex")
    assert "$-" in paired and "Holm" in paired
    assert r"${}\pm" in texs["summary.tex"]                                    # ± aligned in its own column
