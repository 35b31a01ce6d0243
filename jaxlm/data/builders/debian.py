"""Reading the embedded default data from the Debian packages `wordnet-base` and `fortunes`.

WordNet 3.0's `data.noun`, `data.verb`, `data.adj` and `data.adv` hold one synset a line: offset, the
lexicographer file number (field 2), lemmas, pointers, then ' | ' and the gloss (definitions, then example
sentences in double quotes). The lexicographer file names are those of lexnames(5WN) (Debian does not ship
the `lexnames` file itself). The fortunes package holds one file per topic under /usr/share/games/fortunes,
entries separated by lines holding '%'; `.dat` indexes and `.u8` links are skipped, and the typewriter
overstrikes some entries use for emphasis ("_\\bA") are removed.
"""

import dataclasses
import os
import pathlib
import re

from jaxlm.data.builders import local_files

WORDNET_DIR = pathlib.Path("/usr/share/wordnet")
FORTUNES_DIR = pathlib.Path("/usr/share/games/fortunes")
INSTALL_HINT = "install them with `sudo apt-get install wordnet-base fortunes` (or run `bash scripts/setup.sh`)"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_POS = {".noun": "n", ".verb": "v", ".adj": "a", ".adv": "r"}

# lexnames(5WN): the lexicographer file names by number; a synset's category is its file.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)

_OVERSTRIKE = re.compile(".\x08")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclasses.dataclass(frozen=True)
class Synset:
    key: str  # part of speech of its file + offset, e.g. 'n02084071': unique across the four files
    lexname: int  # lexicographer file number, an index into LEXNAMES
    lemmas: tuple[str, ...]
    gloss: str  # as WordNet writes it: definitions; "examples"
    definition: str
    examples: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Fortune:
    topic: str  # its file's name, e.g. 'science'
    text: str  # lines joined by '\n'


def _require(directory: pathlib.Path, names: tuple[str, ...], package: str) -> None:
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the embedded data needs the Debian package {package} ({directory}/{missing[0]} is missing): "
            + INSTALL_HINT
        )


def wordnet_files(directory: os.PathLike = WORDNET_DIR) -> list[pathlib.Path]:
    directory = pathlib.Path(directory)
    _require(directory, WORDNET_FILES, "wordnet-base")
    return [directory / name for name in WORDNET_FILES]


def fortune_files(directory: os.PathLike = FORTUNES_DIR) -> list[pathlib.Path]:
    directory = pathlib.Path(directory)
    files = [] if not directory.is_dir() else sorted(
        p for p in directory.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix
    )
    if not files:
        raise FileNotFoundError(
            f"the embedded data needs the Debian package fortunes (no fortune files in {directory}): " + INSTALL_HINT
        )
    return files


def parse_synset(line: str, pos: str) -> Synset:
    """One `data.*` line (not a license line) -> Synset."""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    count = int(fields[3], 16)
    lemmas = tuple(_ADJ_MARKER.sub("", w).replace("_", " ") for w in fields[4 : 4 + 2 * count : 2])
    gloss = gloss.strip()
    quote = gloss.find('"')
    definition = (gloss if quote < 0 else gloss[:quote]).strip().rstrip(";").strip()
    examples = tuple(e.strip() for e in re.findall(r'"([^"]+)"', gloss) if e.strip())
    return Synset(f"{pos}{fields[0]}", int(fields[1]), lemmas, gloss, definition, examples)


def read_wordnet(directory: os.PathLike = WORDNET_DIR) -> list[Synset]:
    """Every synset, in file order (noun, verb, adj, adv; by offset within a file)."""
    synsets = []
    for path in wordnet_files(directory):
        pos = _POS[path.suffix]
        text, _ = local_files.read_text(path)
        synsets.extend(parse_synset(line, pos) for line in text.splitlines() if line and not line.startswith("  "))
    return synsets


def clean_fortune(text: str) -> str:
    """Overstrikes and control characters removed, lines right-stripped, outer blank lines dropped."""
    text = _CONTROL.sub("", _OVERSTRIKE.sub("", text))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def read_fortunes(directory: os.PathLike = FORTUNES_DIR) -> list[Fortune]:
    """Every non-empty fortune, by file name then position in the file."""
    fortunes = []
    for path in fortune_files(directory):
        text, _ = local_files.read_text(path)
        for entry in re.split(r"^%$", text, flags=re.MULTILINE):
            entry = clean_fortune(entry)
            if entry.strip():
                fortunes.append(Fortune(path.name, entry))
    return fortunes
