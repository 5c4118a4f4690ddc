"""The bundle generator: spec validation, MONAI's ``+key`` merges, comments kept, MONAI's reading order, clean files."""

from __future__ import annotations

import json
import re
import runpy
import shutil
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GENERATOR = runpy.run_path(str(REPO / "scripts" / "generate_bundles.py"))
BUNDLES_DIR = REPO / "bundles"
ALL_BUNDLES = sorted(path.parent.name for path in BUNDLES_DIR.glob("*/bundle.yaml"))
SpecError = GENERATOR["SpecError"]
# config file -> the files MONAI merges to run it (evaluate.yaml and multi_gpu_train.yaml go over train.yaml)
RUN_AS = {
    "train.yaml": ("train.yaml",),
    "evaluate.yaml": ("train.yaml", "evaluate.yaml"),
    "multi_gpu_train.yaml": ("train.yaml", "multi_gpu_train.yaml"),
    "inference.yaml": ("inference.yaml",),
}
READ_ID = re.compile(r"[@%]([^\W\d]\w*(?:(?:#|::)\w+)*)")  # an @id reference or %id macro, nested ids included


@pytest.fixture
def spec_folder(tmp_path, monkeypatch) -> Callable[[str, str], Path]:
    """Writes specs under ``tmp_path/bundles/<name>/``, with the generator reading templates copied there."""
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    module = GENERATOR["compose"].__globals__
    monkeypatch.setitem(module, "REPO", tmp_path)
    monkeypatch.setitem(module, "TEMPLATES", tmp_path / "templates")

    def write(name: str, text: str) -> Path:
        spec = tmp_path / "bundles" / name / "bundle.yaml"
        spec.parent.mkdir(parents=True)
        spec.write_text(text)
        return spec

    return write


def merge(base: str, update: str, source: str = "piece.yaml"):
    """Merge two YAML texts as the generator merges two pieces of one section."""
    read = GENERATOR["_with_notes"]
    from ruamel.yaml import YAML

    trees = [read(YAML(typ="rt").load(text), GENERATOR["_NoteReader"](text)) for text in (base, update)]
    return GENERATOR["deep_merge"](*trees, source)


def test_generated_files_are_up_to_date():
    assert GENERATOR["check"]() == [], "run python scripts/generate_bundles.py"


def test_no_generated_file_carries_a_generator_header():
    for relative, text in GENERATOR["generate"]().items():
        if relative != "README.md":
            assert "generate_bundles.py" not in text and "do not edit" not in text.lower(), relative


def test_generated_configs_fit_the_line_width_and_start_with_their_command():
    for relative, text in GENERATOR["generate"]().items():
        if relative.endswith(".yaml"):
            assert max(len(line) for line in text.splitlines()) <= 120, relative
            assert text.startswith(("# python -m monai.bundle run", "# torchrun")), relative


def test_plus_key_appends_lists_updates_mappings_and_stays_when_nothing_is_there():
    merged = merge(
        "imports: ['$import os']\nnet: {a: 1, b: {c: 2}}\n",
        "+imports: ['$import math']\n+net: {b: {d: 3}}\n+handlers: [{_target_: X}]\n",
    )
    assert merged == {
        "imports": ["$import os", "$import math"],
        "net": {"a": 1, "b": {"d": 3}},  # MONAI's merge_kv: the mapping is updated key by key, not deep-merged
        "+handlers": [{"_target_": "X"}],  # nothing to merge into: left for MONAI to merge at run time
    }
    assert merge("a: {b: 1, c: 2}\n", "a: {b: 5}\n") == {"a": {"b": 5, "c": 2}}  # plain keys deep-merge
    assert merge("a: {_target_: X, b: 1}\n", "a: {_target_: Y}\n") == {"a": {"_target_": "Y"}}  # another component
    with pytest.raises(SpecError, match=r"piece.yaml: '\+imports' must append a list to a list .* holds a mapping"):
        merge("imports: {a: 1}\n", "+imports: [b]\n")
    with pytest.raises(SpecError, match=r"piece.yaml: '\+epochs' must hold a list"):
        merge("epochs: 1\n", "+epochs: 2\n")
    with pytest.raises(SpecError, match=r"piece.yaml: 'imports\+' is the old merge syntax; write '\+imports'"):
        merge("imports: [a]\n", "imports+: [b]\n")


def test_leftover_merge_keys_are_errors_where_nothing_merges_them():
    config = merge("a: 1\n", "inner: {+b: [1]}\n")
    with pytest.raises(SpecError, match=r"'\+b' has nothing to merge into"):
        GENERATOR["render_config"]({"train": config}, ("train",), True)
    with pytest.raises(SpecError, match=r"section train: '\+c' has nothing to merge into"):
        GENERATOR["render_config"]({"train": merge("a: 1\n", "+c: [1]\n")}, ("train",), False)
    evaluate = GENERATOR["render_config"]({"evaluate": merge("a: 1\n", "+c: [1]\n")}, ("evaluate",), True)
    assert evaluate == {"a": 1, "+c": [1]}


def test_comments_travel_with_their_keys_and_later_pieces_replace_them():
    base = (
        "# file header, not a key's\n"
        "\n"
        "settings:\n"
        "  seed: 0  # random seed\n"
        "  # the optimiser\n"
        "  # on two lines\n"
        "  lr: 0.001\n"
        "  url: 'http://x#y'  # a '#' in quotes is not a comment\n"
        "  items:\n"
        "    - _target_: A  # first item\n"
        "      keys: [image, label]\n"
        "    # second item\n"
        "    - '@ref'\n"
    )
    merged = merge(base, "settings:\n  lr: 0.01\n  seed: 1  # another seed\n  +items: [{_target_: B}]  # more\n")
    settings = merged["settings"]
    notes = settings.notes
    assert notes["seed"].inline == "another seed" and notes["lr"].above == ("the optimiser", "on two lines")
    assert not merge(base, "settings: {lr: $@x}\n")["settings"].notes["lr"]  # not a number any more
    assert notes["url"].inline == "a '#' in quotes is not a comment"
    assert settings["url"] == "http://x#y" and settings["lr"] == 0.01
    assert settings["items"].notes[0].inline == "first item" and settings["items"].notes[1].above == ("second item",)
    assert [item if isinstance(item, str) else item["_target_"] for item in settings["items"]] == ["A", "@ref", "B"]
    text = GENERATOR["dump_yaml"](settings, header="usage line")
    heading = f"# {GENERATOR['SETTINGS_HEADING']}"
    assert text.splitlines()[:5] == ["# usage line", "", heading, "seed: 1  # another seed", "# the optimiser"]
    assert "  - _target_: A  # first item\n    keys: [image, label]\n  # second item\n  - '@ref'\n" in text
    assert yaml.safe_load(text) == {"seed": 1, "lr": 0.01, "url": "http://x#y", "items": settings["items"]}


def test_configs_are_written_in_monai_reading_order_and_read_back_by_pyyaml():
    config = merge(
        "run: ['$x']\ntrain: {trainer: {_target_: T}, dataloader: 1, preprocessing: 2, handlers: []}\n"
        "loss: {_target_: L}\nnetwork_def: {_target_: N}\nepochs: 3\nimports: ['$import os']\n"
        "validate: {evaluator: 1, key_metric: 2}\noptimizer: {_target_: O}\nlearning_rate: 3.0e-05\n"
        "long: " + "'$" + " + ".join(["@value"] * 30) + "'\n",
        "initialize: []\ndataset_dir: /data\n",
    )
    text = GENERATOR["dump_yaml"](config)
    keys = [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]
    expected = ["imports", "dataset_dir", "epochs", "learning_rate", "long", "network_def", "loss", "optimizer"]
    assert keys == [*expected, "train", "validate", "initialize", "run"]
    assert text.index("preprocessing") < text.index("dataloader") < text.index("handlers") < text.index("trainer")
    assert "learning_rate: 3.0e-05" in text  # PyYAML reads 3e-05 as a string
    assert all(len(line) <= 120 for line in text.splitlines())
    assert yaml.safe_load(text)["long"] == config["long"]


def test_settings_come_first_under_one_heading_and_plumbing_sits_next_to_its_reader():
    config = merge(
        "imports: ['$import os']\ndataset_dir: /data\ndatalist: $@dataset_dir + '/d.json'\nepochs: 3\n"
        "target_key: target  # plumbing\nweights: {_target_: W}\nrank: $torch.distributed.get_rank()\n"
        "network_def: {_target_: N, out_channels: '@num_classes'}\nshape_transforms: []\n"
        "loss: {_target_: L, weight: '@weights'}\nnum_classes: $read_datalist_field(@datalist, 'num_classes')\n"
        "train: {trainer: {_target_: T, prepare_batch: '@target_key'}, handlers: [{_disabled_: '@rank'}]}\n"
        "learning_rate: 0.1\nempty: []\nunread: $1 + 1\nrun: ['$x']\n",
        "{}\n",
    )
    text = GENERATOR["dump_yaml"](config)
    keys = [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert keys == [
        *("imports", "dataset_dir", "datalist", "epochs", "learning_rate"),  # paths, then the settings
        *("num_classes", "empty", "unread", "network_def"),  # from the datalist; what nothing in this file reads
        *("weights", "loss", "shape_transforms", "target_key", "rank", "train", "run"),  # each above its reader
    ]
    lines = text.splitlines()
    heading = lines.index(f"# {GENERATOR['SETTINGS_HEADING']}")
    assert lines[heading - 1] == "" and lines[heading + 1] == "epochs: 3" and lines[heading + 3] == ""
    assert yaml.safe_load(text) == GENERATOR["_plain"](config)


def test_generator_reports_a_broken_spec(spec_folder):
    spec = spec_folder("broken", "pieces: [datasets/acdc.yaml]\nlosses: {}\n")
    with pytest.raises(SpecError, match=r"broken/bundle.yaml: unknown top-level keys \['losses'\]"):
        GENERATOR["compose"](spec)
    duplicate = spec_folder("duplicate", "pieces: []\ntrain: {a: 1}\ntrain: {b: 2}\n")
    with pytest.raises(SpecError, match=r"duplicate/bundle.yaml: invalid YAML at line 3: found duplicate key"):
        GENERATOR["compose"](duplicate)
    root = spec_folder("root", "+pieces: [networks/vnet.yaml]\n")
    with pytest.raises(SpecError, match=r"root/bundle.yaml: '\+pieces' appends to the pieces of an extended spec"):
        GENERATOR["compose"](root)
    spec_folder("parent", (BUNDLES_DIR / "aorta_sadice" / "bundle.yaml").read_text())
    metadata = spec_folder("metadata", "extends: parent\nmetadata: {generated_by: me}\n")
    with pytest.raises(SpecError, match=r"metadata/bundle.yaml: metadata keys \['generated_by'\] are not in"):
        GENERATOR["bundle_files"](metadata)


def test_extends_merges_the_child_on_top_of_the_parent_spec(spec_folder):
    parent = yaml.safe_load((BUNDLES_DIR / "aorta_sadice" / "bundle.yaml").read_text())
    parent.setdefault("shared", {})["extra"] = [1]
    spec_folder("parent", yaml.safe_dump(parent, sort_keys=False))
    spec_folder(
        "child",
        "extends: parent\ntrain: {epochs: 7, +imports: ['$import math']}\nshared: {+extra: [2]}\n"
        "table: {loss: SA Dice only}\nmetadata: {name: Child}\n",
    )
    grandchild = spec_folder("grandchild", "extends: child\n+pieces: [networks/vnet.yaml]\ndocs: {title: G}\n")
    sections, spec, sources = GENERATOR["compose"](grandchild)
    pieces = [*GENERATOR["read_yaml"](BUNDLES_DIR / "aorta_sadice" / "bundle.yaml")["pieces"], "networks/vnet.yaml"]
    assert spec["pieces"] == pieces  # inherited, then appended to
    assert sources == [
        "templates/base.yaml",
        *(f"templates/{piece}" for piece in pieces),
        "bundles/parent/bundle.yaml",
        "bundles/child/bundle.yaml",
        "bundles/grandchild/bundle.yaml",
    ]
    assert (spec["data_license"], spec["extends"]) == ("aorta.txt", "child")
    assert spec["table"]["loss"] == "SA Dice only" and spec["table"]["network"].startswith("3D U-Net")
    assert (sections["train"]["epochs"], sections["train"]["dataset_dir"]) == (7, "/workspace/data/Aorta")
    assert sections["train"]["imports"][-1] == "$import math" and "+imports" not in sections["train"]
    assert sections["shared"]["extra"] == [1, 2]  # a child's +key appends to the parent's list
    assert sections["shared"]["network_def"]["_target_"] == "VNet"  # the appended piece, later wins
    assert (sections["metadata"]["name"], sections["docs"]["title"]) == ("Child", "G")


def test_extends_reports_unknown_parents_and_cycles(spec_folder):
    orphan = spec_folder("orphan", "extends: missing\n")
    with pytest.raises(SpecError, match=r"orphan/bundle.yaml: extends unknown bundle 'missing'"):
        GENERATOR["compose"](orphan)
    spec_folder("first", "extends: second\n")
    second = spec_folder("second", "extends: first\n")
    with pytest.raises(SpecError, match=r"first/bundle.yaml: 'extends' makes a cycle \(second -> first -> second\)"):
        GENERATOR["compose"](second)
    itself = spec_folder("itself", "extends: itself\n")
    with pytest.raises(SpecError, match=r"itself/bundle.yaml: 'extends' makes a cycle \(itself -> itself\)"):
        GENERATOR["compose"](itself)
    path = spec_folder("path", "extends: ../acdc17_rrw\n")
    with pytest.raises(SpecError, match=r"path/bundle.yaml: 'extends' must name another bundle"):
        GENERATOR["compose"](path)


def test_readme_renders_the_zoo_sections_and_an_optional_protocol():
    sections = GENERATOR["compose"](BUNDLES_DIR / "acdc17_rrw" / "bundle.yaml")[0]
    readme = GENERATOR["render_docs"]("acdc17_rrw", sections)
    titles = [line for line in readme.splitlines() if line.startswith("## ")]
    zoo = ["Model Overview", "Data", "Training configuration", "Performance", "MONAI Bundle Commands", "References"]
    assert [title for title in titles if title[3:] in zoo] == [f"## {title}" for title in zoo]
    assert titles[-1] == "## License" and "--method" not in (REPO / "templates" / "README.md.in").read_text()
    table = "| setting | this bundle | paper | note |\n|---|---|---|---|\n| epochs | 300 | 300 |  |"
    sections["docs"]["protocol"] = table
    with_protocol = GENERATOR["render_docs"]("acdc17_rrw", sections)
    assert "## Protocol\n\n| setting | this bundle | paper | note |" in with_protocol
    assert with_protocol.index("## Protocol") < with_protocol.index("## Performance")


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_metadata_has_schema_keys_and_public_pinned_packages_only(name, schema_file):
    metadata = json.loads((BUNDLES_DIR / name / "configs" / "metadata.json").read_text())
    jsonschema.validate(metadata, json.loads(schema_file.read_text()))
    assert set(metadata) <= GENERATOR["METADATA_KEYS"]
    packages = metadata["required_packages_version"]
    assert "imbalance-seg-bundles" not in packages
    assert all(version.count(".") >= 1 and version[0].isdigit() for version in packages.values())


def test_merge_and_id_markers_are_monais():
    from monai.bundle.utils import ID_SEP_KEY, MERGE_KEY

    assert (GENERATOR["MERGE_KEY"], GENERATOR["ID_SEP_KEY"]) == (MERGE_KEY, ID_SEP_KEY)


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_readme_commands_name_files_of_the_bundle_folder(name):
    readme = (BUNDLES_DIR / name / "docs" / "README.md").read_text()
    commands = readme.split("## MONAI Bundle Commands", 1)[1].split("## References", 1)[0]
    named = set(re.findall(r"(?:configs|docs|models)/[\w.]+\.(?:yaml|conf|json|txt)", commands))
    assert {"configs/train.yaml", "configs/evaluate.yaml", "configs/inference.yaml"} <= named
    assert all((BUNDLES_DIR / name / path).is_file() for path in named), named
    assert "scripts/" not in commands and "bundles/" not in commands


def test_comment_marks_inside_quoted_values_stay_values():
    config = merge("ok: 1  # one\nkey: 'x # y'  # a comment\n", "{}\n")
    text = GENERATOR["dump_yaml"](config)
    assert "key: 'x # y'  # a comment" in text and "ok: 1  # one" in text
    assert yaml.safe_load(text) == {"ok": 1, "key": "x # y"}


def test_a_tilde_key_removes_a_setting_nothing_reads_any_more():
    merged = GENERATOR["deep_merge"]({"kept": 1, "dropped": [1.0], "nested": {"a": 1}}, {"~dropped": None}, "spec")
    assert GENERATOR["_plain"](merged) == {"kept": 1, "nested": {"a": 1}}


def config_ids(config: dict, prefix: str = ""):
    """Every key of a config as a MONAI id, nested ones too (below mappings that are not components)."""
    for key, value in config.items():
        ident = f"{prefix}#{key}" if prefix else str(key).removeprefix("+").replace("::", "#")
        yield ident
        if isinstance(value, dict) and "_target_" not in value:
            yield from config_ids(value, ident)


def read_ids(value) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(read_ids(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(read_ids(item) for item in value))
    return {found.replace("::", "#") for found in READ_ID.findall(value)} if isinstance(value, str) else set()


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_every_key_of_the_generated_configs_is_read(name):
    """No key that nothing reads (such as a pairing's `train#rw_map: null`): each id, top-level or nested, is read by
    an ``@``/``%`` reference or ``$`` expression of the config it runs in (evaluate.yaml and multi_gpu_train.yaml
    merged over train.yaml), is a workflow entry point, or is a MONAI bundle property (a train or inference
    workflow's ``bundle_root``, ``train#trainer``, ...). A key read by the keys below it (a section such as
    ``train``) or above it (an argument of ``network_settings``) counts as read."""
    from monai.bundle import ConfigParser
    from monai.bundle.properties import InferProperties, TrainProperties
    from monai.bundle.utils import ID_SEP_KEY

    properties = {
        item["id"].replace(ID_SEP_KEY, "#") for group in (TrainProperties, InferProperties) for item in group.values()
    }
    folder = BUNDLES_DIR / name / "configs"
    unread = {}
    for file, run_as in RUN_AS.items():
        merged = ConfigParser.load_config_files([str(folder / part) for part in run_as])
        read = read_ids(merged) | properties | {"imports", "initialize", "run", "finalize"}
        own = yaml.safe_load((folder / file).read_text())
        missing = [
            ident
            for ident in config_ids(own)
            if not any(
                ident == other or other.startswith(f"{ident}#") or ident.startswith(f"{other}#") for other in read
            )
        ]
        if missing:
            unread[file] = missing
    assert not unread, f"keys nothing reads (remove them in the spec or template with ~key): {unread}"
