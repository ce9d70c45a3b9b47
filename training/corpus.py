"""The news-genre corpus: whole articles written in a plain labelled format, turned into CSV.

Writing format (one file holds several articles; see docs/labelling-guide.md, "Writing articles"):

    ### id=W1-05 | genre=wire | date=2025-11-18 | outlet=Pacific Wire Service | headline=...
    N N | First sentence of the article.
    F A | Second sentence; labels are taiwan_policy then external_pressure: F favor, A against, N none.

    N N | A blank line starts a new paragraph.

`python -m stancewatch.training.corpus build OUT.csv FILES...` writes the wide CSV the loader reads (doc_id,
sentence_index, genre, date, outlet, text, context, one column per target), each sentence's context
being the sentence before it in its article, as `POST /predict_document` reads it.
`python -m stancewatch.training.corpus blind OUT_DIR FILES...` writes the same articles without labels for a
second, independent annotator, and `python -m stancewatch.training.corpus agree FILES... --second LABELS...`
reports Cohen's kappa per target and lists the disagreements to adjudicate.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

TARGETS = ("taiwan_policy", "external_pressure")  # the order of the two label letters
CODES = {"F": "favor", "A": "against", "N": "none"}
GENRES = ("wire", "japan_paper", "taiwan_paper", "china_state", "editorial", "analysis", "market", "unrelated")
_HEADER = re.compile(r"^###\s*(.*)$")
_LINE = re.compile(r"^([FAN])\s+([FAN])\s*\|\s?(.*\S)\s*$")
COLUMNS = ["doc_id", "sentence_index", "genre", "date", "outlet", "text", "context", *TARGETS]


class CorpusError(ValueError):
    pass


@dataclass
class Article:
    doc_id: str
    genre: str
    date: str
    outlet: str
    headline: str
    sentences: list[str] = field(default_factory=list)
    labels: list[tuple[str, str]] = field(default_factory=list)
    paragraph_starts: list[int] = field(default_factory=list)  # sentence indices that open a paragraph
    where: str = ""

    @property
    def text(self) -> str:
        """The article as running text: sentences joined by spaces, paragraphs by a blank line."""
        parts = []
        for i, s in enumerate(self.sentences):
            if i and i in self.paragraph_starts:
                parts.append("\n\n")
            elif i:
                parts.append(" ")
            parts.append(s)
        return "".join(parts)


def _header(line: str, where: str) -> dict[str, str]:
    fields = {}
    for part in _HEADER.match(line).group(1).split("|"):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise CorpusError(f"{where}: header part {part.strip()!r} is not key=value")
        fields[key.strip()] = value.strip()
    missing = [k for k in ("id", "genre", "date") if not fields.get(k)]
    if missing:
        raise CorpusError(f"{where}: header lacks {', '.join(missing)}")
    if fields["genre"] not in GENRES:
        raise CorpusError(f"{where}: genre {fields['genre']!r}; allowed: {', '.join(GENRES)}")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", fields["date"]):
        raise CorpusError(f"{where}: date {fields['date']!r} is not YYYY-MM-DD")
    return fields


def parse_articles(path: Path, labelled: bool = True) -> list[Article]:
    """Articles of one file; every malformed line is an error naming file and line."""
    articles: list[Article] = []
    problems = []
    blank = False
    for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{path}:{n}"
        line = raw.strip()
        if not line:
            blank = True
            continue
        if line.startswith("###"):
            try:
                h = _header(line, where)
            except CorpusError as exc:
                problems.append(str(exc))
                continue
            articles.append(
                Article(h["id"], h["genre"], h["date"], h.get("outlet", ""), h.get("headline", ""), where=where)
            )
            blank = False
            continue
        if not articles:
            problems.append(f"{where}: text before the first ### header")
            continue
        art = articles[-1]
        if labelled:
            m = _LINE.match(line)
            if not m:
                problems.append(f"{where}: expected 'X Y | sentence' with X, Y in F/A/N, got {line[:60]!r}")
                continue
            art.labels.append((CODES[m.group(1)], CODES[m.group(2)]))
            text = m.group(3).strip()
        else:
            text = re.sub(r"^\d+\s*\|\s?", "", line).strip()
        if blank and art.sentences:
            art.paragraph_starts.append(len(art.sentences))
        art.sentences.append(text)
        blank = False
    seen = set()
    for art in articles:
        if art.doc_id in seen:
            problems.append(f"{art.where}: article id {art.doc_id!r} used twice")
        seen.add(art.doc_id)
        if not art.sentences:
            problems.append(f"{art.where}: article {art.doc_id} has no sentences")
    if problems:
        raise CorpusError("\n".join(problems))
    return articles


def rows(articles: list[Article]) -> list[dict[str, str]]:
    """One wide row per sentence, with the sentence before it (same article) as context."""
    out = []
    for art in articles:
        for i, (text, labels) in enumerate(zip(art.sentences, art.labels)):
            out.append(
                {
                    "doc_id": art.doc_id,
                    "sentence_index": str(i),
                    "genre": art.genre,
                    "date": art.date,
                    "outlet": art.outlet,
                    "text": text,
                    "context": art.sentences[i - 1] if i else "",
                    **dict(zip(TARGETS, labels)),
                }
            )
    return out


def write_csv(articles: list[Article], out: Path) -> int:
    table = rows(articles)
    with Path(out).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    return len(table)


def splitter_mismatches(articles: list[Article]) -> list[str]:
    """Articles whose running text the service's splitter cuts into other sentences than written."""
    from stancewatch.model.splitter import split_sentences

    out = []
    for art in articles:
        got = [s.text for s in split_sentences(art.text)]
        if got != art.sentences:
            extra = [s for s in got if s not in art.sentences][:2]
            out.append(f"{art.doc_id}: {len(art.sentences)} written, {len(got)} split; e.g. {extra}")
    return out


def blind_copy(articles: list[Article], out_dir: Path, name: str) -> Path:
    """The articles with numbered sentences and no labels, for an independent second pass."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for art in articles:
        lines.append(
            f"### id={art.doc_id} | genre={art.genre} | date={art.date} | outlet={art.outlet} | headline={art.headline}"
        )
        for i, s in enumerate(art.sentences):
            if i and i in art.paragraph_starts:
                lines.append("")
            lines.append(f"{i} | {s}")
        lines.append("")
    path = out_dir / name
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def read_second_pass(paths: list[Path]) -> dict[tuple[str, int], tuple[str, str]]:
    """Second-pass labels: lines `doc_id<TAB>sentence_index<TAB>X<TAB>Y` (X, Y in F/A/N)."""
    labels: dict[tuple[str, int], tuple[str, str]] = {}
    problems = []
    for path in paths:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = re.split(r"\t|\s+", line.strip())
            if len(parts) < 4 or parts[2] not in CODES or parts[3] not in CODES or not parts[1].isdigit():
                problems.append(f"{path}:{n}: expected doc_id, index, X, Y; got {line[:60]!r}")
                continue
            labels[(parts[0], int(parts[1]))] = (CODES[parts[2]], CODES[parts[3]])
    if problems:
        raise CorpusError("\n".join(problems))
    return labels


def read_decisions(paths: list[Path]) -> dict[tuple[str, int], tuple[str, str, str, str]]:
    """Adjudicated labels: lines `doc_id<TAB>index<TAB>X<TAB>Y<TAB>rule<TAB>reason`."""
    out: dict[tuple[str, int], tuple[str, str, str, str]] = {}
    problems = []
    for path in paths:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4 or parts[2] not in CODES or parts[3] not in CODES or not parts[1].strip().isdigit():
                problems.append(f"{path}:{n}: expected doc_id, index, X, Y, rule, reason; got {line[:60]!r}")
                continue
            rule = parts[4].strip() if len(parts) > 4 else ""
            reason = parts[5].strip() if len(parts) > 5 else ""
            out[(parts[0].strip(), int(parts[1]))] = (CODES[parts[2]], CODES[parts[3]], rule, reason)
    if problems:
        raise CorpusError("\n".join(problems))
    return out


def apply_decisions(articles: list[Article], decisions: dict) -> int:
    """Replace the labels of adjudicated sentences of these articles (decisions about other articles
    are left for their own files); a decision naming a sentence its article lacks is an error."""
    where = {(a.doc_id, i): a for a in articles for i in range(len(a.sentences))}
    docs = {a.doc_id for a in articles}
    mine = {k: v for k, v in decisions.items() if k[0] in docs}
    unknown = [f"{d}:{i}" for d, i in mine if (d, i) not in where]
    if unknown:
        raise CorpusError(f"decisions for sentences that do not exist: {', '.join(unknown[:10])}")
    for (doc, i), (x, y, _, _) in mine.items():
        where[(doc, i)].labels[i] = (x, y)
    return len(mine)


def adjudication_markdown(articles: list[Article], second: dict, decisions: dict) -> str:
    """The adjudication list: every disagreement, both passes, the decision and its reason."""
    letter = {v: k for k, v in CODES.items()}
    lines = [
        "| sentence | text | first pass | second pass | decision | rule | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    undecided = []
    for art in articles:
        for i, (text, labels) in enumerate(zip(art.sentences, art.labels)):
            other = second.get((art.doc_id, i))
            if other is None or tuple(other) == tuple(labels):
                continue
            d = decisions.get((art.doc_id, i))
            if d is None:
                undecided.append(f"{art.doc_id}:{i}")
                continue
            show = text if len(text) <= 160 else text[:157] + "..."
            cell = lambda pair: " ".join(letter[x] for x in pair)  # noqa: E731
            lines.append(
                f"| {art.doc_id}:{i} | {show.replace('|', '/')} | {cell(labels)} | {cell(other)} | "
                f"{cell(d[:2])} | {d[2]} | {d[3].replace('|', '/')} |"
            )
    if undecided:
        raise CorpusError(f"disagreements without a decision: {', '.join(undecided[:10])}")
    return "\n".join(lines) + "\n"


def agreement(articles: list[Article], second: dict[tuple[str, int], tuple[str, str]]) -> dict:
    """Cohen's kappa and raw agreement per target, the disagreements, and sentences with no second label."""
    from sklearn.metrics import cohen_kappa_score

    first_l: dict[str, list[str]] = {t: [] for t in TARGETS}
    second_l: dict[str, list[str]] = {t: [] for t in TARGETS}
    disagreements, missing = [], []
    for art in articles:
        for i, (text, labels) in enumerate(zip(art.sentences, art.labels)):
            other = second.get((art.doc_id, i))
            if other is None:
                missing.append(f"{art.doc_id}:{i}")
                continue
            for j, t in enumerate(TARGETS):
                first_l[t].append(labels[j])
                second_l[t].append(other[j])
            if tuple(labels) != tuple(other):
                disagreements.append(
                    {
                        "doc_id": art.doc_id,
                        "sentence_index": i,
                        "text": text,
                        "context": art.sentences[i - 1] if i else "",
                        "first": list(labels),
                        "second": list(other),
                    }
                )
    out = {"sentences": len(first_l[TARGETS[0]]), "missing": missing, "disagreements": disagreements, "targets": {}}
    for t in TARGETS:
        a, b = first_l[t], second_l[t]
        out["targets"][t] = {
            "kappa": float(cohen_kappa_score(a, b)) if a else 0.0,
            "agreement": sum(x == y for x, y in zip(a, b)) / max(1, len(a)),
        }
    return out


def stats_markdown(csv_path: Path) -> str:
    """Articles, sentences and label counts per genre and target of a built corpus CSV, as Markdown."""
    with Path(csv_path).open(newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    genres = [g for g in GENRES if any(r["genre"] == g for r in table)]
    head = (
        "| genre | articles | sentences | none/none | "
        + " | ".join(f"{t} {lab}" for t in TARGETS for lab in ("favor", "against", "none"))
        + " |"
    )
    lines = [head, "|" + "---|" * (4 + 3 * len(TARGETS))]
    for g in genres + ["all"]:
        sub = [r for r in table if g == "all" or r["genre"] == g]
        both = sum(r[TARGETS[0]] == r[TARGETS[1]] == "none" for r in sub)
        cells = [str(sum(r[t] == lab for r in sub)) for t in TARGETS for lab in ("favor", "against", "none")]
        name = f"**{g}**" if g == "all" else g
        lines.append(
            f"| {name} | {len({r['doc_id'] for r in sub})} | {len(sub)} | {100 * both / len(sub):.0f}% | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stancewatch.training.corpus", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="labelled article files -> wide CSV")
    b.add_argument("out", type=Path)
    b.add_argument("files", type=Path, nargs="+")
    b.add_argument(
        "--decisions", type=Path, nargs="*", default=[], help="adjudicated labels (TSV) that replace the files' own"
    )
    bl = sub.add_parser("blind", help="labelled article files -> unlabelled copies for a second annotator")
    bl.add_argument("out_dir", type=Path)
    bl.add_argument("files", type=Path, nargs="+")
    ag = sub.add_parser("agree", help="kappa between the files' labels and a second pass")
    ag.add_argument("files", type=Path, nargs="+")
    ag.add_argument("--second", type=Path, nargs="+", required=True)
    ag.add_argument("--out", type=Path, help="write the result (kappa, disagreements) as JSON")
    ag.add_argument("--decisions", type=Path, nargs="*", default=[], help="with --list: the adjudicated labels")
    ag.add_argument("--list", type=Path, help="write the adjudication list (Markdown table) here")
    st = sub.add_parser("stats", help="label counts per genre and target of a built CSV (Markdown)")
    st.add_argument("csv", type=Path)
    args = parser.parse_args(argv)
    if args.command == "stats":
        print(stats_markdown(args.csv), end="")
        return 0
    try:
        articles = [a for f in args.files for a in parse_articles(f)]
        if args.command == "build":
            if args.decisions:
                print(f"{apply_decisions(articles, read_decisions(args.decisions))} adjudicated labels applied")
            n = write_csv(articles, args.out)
            print(f"{args.out}: {len(articles)} articles, {n} sentences")
            for line in splitter_mismatches(articles):
                print(f"  splitter differs: {line}")
        elif args.command == "blind":
            for f in args.files:
                print(blind_copy(parse_articles(f), args.out_dir, f"{f.parent.name}-{f.name}"))
        else:
            second = read_second_pass(args.second)
            result = agreement(articles, second)
            if args.list:
                args.list.write_text(
                    adjudication_markdown(articles, second, read_decisions(args.decisions)), encoding="utf-8"
                )
            for t, r in result["targets"].items():
                print(f"{t}: kappa {r['kappa']:.3f}, agreement {100 * r['agreement']:.1f}%")
            print(
                f"{result['sentences']} sentences compared, {len(result['disagreements'])} disagree, "
                f"{len(result['missing'])} without a second label"
            )
            if args.out:
                args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    except CorpusError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
