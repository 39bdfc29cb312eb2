"""The report's HTML page: `index.html` in the report folder, openable from disk.

`simclr_mura.study.report` and `simclr_mura.study.explore` each write their part of the page as a section file
(`section_results.html`, `section_explore.html`) into the same folder and then call `write_index`,
which joins the sections found there. So either tool can run first, and running one again replaces
only its own section. Figures are referenced by paths relative to the folder.
"""
import dataclasses
import html
import os
import re
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from simclr_mura import io_util
from simclr_mura.study import run_files

# Page order of the sections.
SECTIONS = ('explore', 'results')
_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #eef; }
td.num { text-align: right; }
tr:nth-child(even) td { background: #f7f7f7; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
p.note { font-size: 13px; color: #444; max-width: 1100px; }
p.missing { color: #a00; }
nav a { margin-right: 1em; }
"""


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure of the page: its title, PNG path (None when it could not be drawn) and a note."""
    title: str
    path: Optional[str]
    note: str = ''


def table_html(rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; the first row is the header."""
    if not rows:
        return '<p>(no rows)</p>'
    head = ''.join(f'<th>{html.escape(str(c))}</th>' for c in rows[0])
    body = ''.join('<tr>' + ''.join(_cell(c) for c in row) + '</tr>' for row in rows[1:])
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value) -> str:
    """A table cell; text left-aligned, numbers (and '-', '0.5 [0.4, 0.6]', '0.8/0.5/0.3') right."""
    text = str(value)
    numeric = re.fullmatch(r'[-+0-9.%/\[\], ]+', text) is not None
    return f'<td class="num">{html.escape(text)}</td>' if numeric else f'<td>{html.escape(text)}</td>'


def figure_html(figure: Figure, out_dir: str) -> str:
    """A figure block with the image path relative to `out_dir`, or the note when there is none."""
    title = html.escape(figure.title)
    if figure.path is None:
        return f'<figure><h3>{title}</h3><p class="missing">{html.escape(figure.note)}</p></figure>'
    source = os.path.relpath(figure.path, out_dir).replace(os.sep, '/')
    note = f'<figcaption>{html.escape(figure.note)}</figcaption>' if figure.note else ''
    return (f'<figure><h3>{title}</h3><a href="{html.escape(source)}"><img src="{html.escape(source)}" '
            f'alt="{title}"></a>{note}</figure>')


def results_section(tables: Dict[str, List[List[str]]], notes: str, figures: Sequence[Figure],
                    out_dir: str) -> str:
    parts = ['<section id="results"><h2>Results</h2>']
    if not tables:
        parts.append(f'<p class="missing">No finished runs (no {run_files.RESULT} below the model '
                     'root).</p>')
    for level, rows in tables.items():
        title = f'{level.capitalize()} level' if level in ('study', 'image') else level
        parts.append(f'<h3>{html.escape(title)}</h3>{table_html(rows)}')
    parts.append(f'<p class="note">{html.escape(notes)} Also as <a href="results.csv">results.csv</a> '
                 'and <a href="results.md">results.md</a>.</p>')
    parts += [figure_html(f, out_dir) for f in figures]
    parts.append('</section>')
    return '\n'.join(parts)


def section_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f'section_{name}.html')


def write_section(out_dir: str, name: str, body: str) -> None:
    if name not in SECTIONS:
        raise ValueError(f'unknown section {name!r}; one of {SECTIONS}')
    io_util.write_text_atomic(section_path(out_dir, name), body + '\n')


def write_index(out_dir: str, title: str = 'simclr-mura: data and results') -> str:
    """(Re)writes `out_dir/index.html` from the section files present; returns its path."""
    found = []
    for name in SECTIONS:
        path = section_path(out_dir, name)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                found.append((name, f.read()))
    nav = ' '.join(f'<a href="#{name}">{name}</a>' for name, _ in found)
    missing = [name for name in SECTIONS if name not in dict(found)]
    hint = {'explore': 'python -m simclr_mura.study.explore --data_dir D --out this folder',
            'results': 'python -m simclr_mura.study.report --model_root M --out this folder'}
    absent = ''.join(f'<p class="note">No {name} section yet ({html.escape(hint[name])}).</p>'
                     for name in missing)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
            f'</title><style>{_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>'
            f'<nav>{nav}</nav>{absent}\n' + '\n'.join(body for _, body in found) + '\n</body></html>\n')
    path = os.path.join(out_dir, 'index.html')
    io_util.write_text_atomic(path, page)
    return path
