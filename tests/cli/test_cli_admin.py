"""The admin commands, run as a real `python -m relay` subprocess in temp dirs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import main as cli
from relay.config.files import load_config
from relay.config.keys import load_private_key
from relay.config.sealkeys import load_seal_key
from relay.errors import ConfigErrors, PolicyRefused, RelayError
from relay.protocol.keystr import parse_public_key, private_key_from_seed, public_key_string

# Nearly every test here runs `relay` as a subprocess (0.5-6 s each).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY_X = public_key_string(private_key_from_seed(bytes([7]) * 32).public_key())
PROBLEM_LINE = re.compile(r"^(?P<file>/[^:]+):(?P<line>\d+): (?P<key>[^ ]+): (?P<reason>.+)$")


def relay(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "relay", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def init(directory: Path, name: str, cc: str, port: int = 8701) -> str:
    """Run `relay init`; return the printed `relay peer add` line."""
    done = relay(
        "init", directory, "--name", name, "--jurisdiction", cc, "--listen", f"127.0.0.1:{port}"
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def problem_lines(stderr: str) -> list[re.Match[str]]:
    lines = stderr.splitlines()
    matches = [PROBLEM_LINE.match(line) for line in lines]
    assert all(matches), stderr
    return [m for m in matches if m]


# --- init --------------------------------------------------------------------


def test_init_writes_private_files_and_a_peer_line(tmp_path: Path) -> None:
    node = tmp_path / "deep" / "msk"
    stdout = init(node, "msk.example.ru", "RU")
    assert (node / "node.toml").stat().st_mode & 0o777 == 0o644
    assert (node / "node.key").stat().st_mode & 0o777 == 0o600
    assert node.stat().st_mode & 0o777 == 0o700
    assert (node / "node.seal").stat().st_mode & 0o777 == 0o600
    pub = public_key_string(load_private_key(node / "node.key").public_key())
    seal = load_seal_key(node / "node.seal").public.string
    assert stdout == (
        "relay peer add YOUR_NODE_DIR --name msk.example.ru --url http://127.0.0.1:8701 "
        f"--jurisdiction RU --key {pub} --seal-key {seal}\n"
    )
    config = load_config(node)
    assert config.node.name == "msk.example.ru"
    assert config.policy.default_residency == frozenset({"RU"})
    assert "#" in (node / "node.toml").read_text()  # commented for the admin


def test_printed_peer_lines_paste_into_the_other_node(tmp_path: Path) -> None:
    msk, ala = tmp_path / "msk", tmp_path / "ala"
    msk_line = init(msk, "msk.example.ru", "RU", 8701)
    ala_line = init(ala, "ala.example.kz", "KZ", 8702)
    for line, other in ((msk_line, ala), (ala_line, msk)):
        argv = shlex.split(line.replace("YOUR_NODE_DIR", shlex.quote(str(other))))
        assert argv[0] == "relay"
        done = relay(*argv[1:])
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
    msk_key = relay("key", "show", msk).stdout.strip()
    ala_key = relay("key", "show", ala).stdout.strip()
    assert load_config(ala).peers[0].keys == (msk_key,)
    assert load_config(msk).peer("ala.example.kz") is not None
    assert load_config(msk).peers[0].keys == (ala_key,)
    assert load_config(msk).peers[0].url == "http://127.0.0.1:8702"


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    node = tmp_path / "n"
    init(node, "msk.example.ru", "RU")
    before = {p.name: p.read_bytes() for p in node.iterdir()}
    done = relay("init", node, "--name", "other.example.ru", "--jurisdiction", "RU")
    assert done.returncode == 1
    assert "refusing to overwrite" in done.stderr
    assert {p.name: p.read_bytes() for p in node.iterdir()} == before


def test_init_refuses_when_only_the_key_exists(tmp_path: Path) -> None:
    node = tmp_path / "n"
    node.mkdir()
    (node / "node.key").write_bytes(b"precious")
    done = relay("init", node, "--name", "msk.example.ru", "--jurisdiction", "RU")
    assert done.returncode == 1
    assert sorted(p.name for p in node.iterdir()) == ["node.key"]
    assert (node / "node.key").read_bytes() == b"precious"


@pytest.mark.parametrize(
    "args",
    [
        ["--name", "Bad_Name", "--jurisdiction", "RU"],
        ["--name", "msk.example.ru", "--jurisdiction", "XX"],
        ["--name", "msk.example.ru", "--jurisdiction", "RU", "--listen", "nowhere"],
        ["--name", "msk.example.ru", "--jurisdiction", "RU", "--public-url", "ftp://x"],
    ],
)
def test_init_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    done = relay("init", tmp_path / "n", *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert not (tmp_path / "n").exists()


# --- key ---------------------------------------------------------------------


def test_key_show(tmp_path: Path) -> None:
    init(tmp_path, "msk.example.ru", "RU")
    pub = public_key_string(load_private_key(tmp_path / "node.key").public_key())
    done = relay("key", "show", tmp_path)
    assert (done.returncode, done.stdout) == (0, pub + "\n")
    shown = json.loads(relay("key", "show", tmp_path / "node.toml", "--json").stdout)
    assert shown == {"name": "msk.example.ru", "key": pub, "key_id": pub[8:16]}


# --- peer --------------------------------------------------------------------


def test_peer_add_keeps_the_admins_comments(tmp_path: Path) -> None:
    init(tmp_path, "msk.example.ru", "RU")
    file = tmp_path / "node.toml"
    text = file.read_text().replace(
        'database = "relay.db"', 'database = "relay.db"  # on the fast disk\n# keep this note'
    )
    file.write_text(text)
    done = relay(
        "peer", "add", tmp_path, "--name", "ala.example.kz", "--jurisdiction", "KZ",
        "--key", KEY_X, "--url", "https://relay.example.kz/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = file.read_text()
    assert after.startswith(text)  # everything before is untouched, comments included
    assert "# on the fast disk\n# keep this note" in after
    assert load_config(tmp_path).peers[0].url == "https://relay.example.kz"
    assert file.stat().st_mode & 0o777 == 0o644


def test_peer_add_duplicate_is_refused_with_its_line(tmp_path: Path) -> None:
    init(tmp_path, "msk.example.ru", "RU")
    add = ("peer", "add", tmp_path, "--name", "ala.example.kz", "--jurisdiction", "KZ")
    assert relay(*add, "--key", KEY_X).returncode == 0
    file = tmp_path / "node.toml"
    before = file.read_text()
    done = relay(*add, "--key", KEY_X)
    assert done.returncode == 2
    (problem,) = problem_lines(done.stderr)
    name_line = before.splitlines().index('name = "ala.example.kz"') + 1
    assert problem["file"] == str(file)
    assert int(problem["line"]) == name_line
    assert problem["key"] == "peers[0].name"
    assert file.read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "msk.example.ru", "--jurisdiction", "RU", "--key", KEY_X], "own name"),
        (["--name", "ala.example.kz", "--jurisdiction", "KZ", "--key", "ed25519:AAAA"], "--key"),
        (["--name", "ala.example.kz", "--jurisdiction", "KZ"], "--key"),
        (["--name", "ala.example.kz", "--jurisdiction", "kz", "--key", KEY_X], "uppercase"),
        (["--name", "ala", "--jurisdiction", "KZ", "--key", KEY_X, "--url", "x"], "--url"),
    ],
)
def test_peer_add_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    init(tmp_path, "msk.example.ru", "RU")
    before = (tmp_path / "node.toml").read_text()
    done = relay("peer", "add", tmp_path, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert (tmp_path / "node.toml").read_text() == before


def test_peer_update_and_remove(tmp_path: Path) -> None:
    init(tmp_path, "msk.example.ru", "RU")
    base = ("--name", "ala.example.kz")
    assert (
        relay("peer", "add", tmp_path, *base, "--jurisdiction", "KZ", "--key", KEY_X).returncode
        == 0
    )
    assert (
        relay(
            "peer", "add", tmp_path, "--name", "b.example", "--jurisdiction", "BY", "--key", KEY_X
        ).returncode
        == 0
    )
    new_key = public_key_string(private_key_from_seed(bytes([8]) * 32).public_key())
    done = relay(
        "peer", "update", tmp_path, *base, "--url", "http://10.0.0.2:8702",
        "--jurisdiction", "KG", "--key", new_key, "--key", KEY_X,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    peer = load_config(tmp_path).peer("ala.example.kz")
    assert peer is not None
    assert (peer.url, peer.jurisdiction, peer.keys) == (
        "http://10.0.0.2:8702",
        "KG",
        (new_key, KEY_X),
    )
    assert relay("peer", "update", tmp_path, *base, "--no-url").returncode == 0
    peer = load_config(tmp_path).peer("ala.example.kz")
    assert peer is not None and peer.url is None
    assert relay("peer", "update", tmp_path, *base).returncode == 2  # nothing to change
    assert relay("peer", "remove", tmp_path, *base).returncode == 0
    assert [p.name for p in load_config(tmp_path).peers] == ["b.example"]
    assert relay("peer", "remove", tmp_path, *base).returncode == 1
    assert relay("peer", "update", tmp_path, *base, "--jurisdiction", "KZ").returncode == 1
    assert relay("peer", "remove", tmp_path, "--name", "b.example").returncode == 0
    assert load_config(tmp_path).peers == ()
    assert "[[peers]]\nname" not in (tmp_path / "node.toml").read_text()


# --- mailbox -----------------------------------------------------------------


def test_mailbox_add_prints_token_last_and_stores_its_hash(tmp_path: Path) -> None:
    init(tmp_path, "msk.example.ru", "RU")
    done = relay("mailbox", "add", tmp_path, "alice")
    assert done.returncode == 0, done.stderr
    token = done.stdout.splitlines()[-1]
    assert len(token) >= 40
    assert token.startswith("rly_"), (
        "a token never starts with - (argparse would take it for an option)"
    )
    box = load_config(tmp_path).mailbox("alice")
    assert box is not None
    assert box.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (tmp_path / "node.toml").read_text()

    again = relay("mailbox", "add", tmp_path, "alice")
    assert again.returncode == 2
    assert problem_lines(again.stderr)[0]["key"] == "mailboxes[0].name"

    rotated = relay("mailbox", "rotate", tmp_path, "alice")
    assert rotated.returncode == 0
    new_token = rotated.stdout.splitlines()[-1]
    assert new_token != token
    box = load_config(tmp_path).mailbox("alice")
    assert box is not None and box.token_sha256 == hashlib.sha256(new_token.encode()).hexdigest()

    assert relay("mailbox", "add", tmp_path, "Bad Name").returncode == 2
    assert relay("mailbox", "remove", tmp_path, "alice").returncode == 0
    assert load_config(tmp_path).mailboxes == ()
    assert relay("mailbox", "remove", tmp_path, "alice").returncode == 1
    assert relay("mailbox", "rotate", tmp_path, "alice").returncode == 1


def test_an_edit_that_would_break_the_config_writes_nothing(tmp_path: Path) -> None:
    init(tmp_path, "msk.example.ru", "RU")
    assert relay("mailbox", "add", tmp_path, "alice").returncode == 0
    file = tmp_path / "node.toml"
    file.write_text(
        file.read_text() + '\n[[policy.rules]]\nid = "alice-home"\nsender = "alice"\n'
        'effect = "limit"\nresidency = ["RU"]\n'
    )
    before = file.read_text()
    done = relay("mailbox", "remove", tmp_path, "alice")
    assert done.returncode == 2
    assert "no mailbox 'alice' here" in done.stderr
    assert file.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


# --- check -------------------------------------------------------------------


def test_check_ok(tmp_path: Path) -> None:
    init(tmp_path, "msk.example.ru", "RU")
    relay("mailbox", "add", tmp_path, "alice")
    done = relay("check", tmp_path)
    storage = f"sqlite:{tmp_path / 'relay.db'}"
    ok = f"ok: msk.example.ru (RU), 0 peers, 1 mailbox, storage {storage}\n"
    assert (done.returncode, done.stdout) == (0, ok)
    as_json = json.loads(relay("check", tmp_path, "--json").stdout)
    assert as_json == {
        "ok": True, "name": "msk.example.ru", "jurisdiction": "RU", "peers": 0, "mailboxes": 1,
        "storage": storage,
    }  # fmt: skip


def _break_unknown_key(node: Path) -> tuple[str, str, str]:
    edit(node, 'database = "relay.db"', 'database = "relay.db"\ncolour = "blue"')
    return 'colour = "blue"', "node.colour", "unknown key"


def _break_country(node: Path) -> tuple[str, str, str]:
    edit(node, 'jurisdiction = "RU"', 'jurisdiction = "XX"')
    return 'jurisdiction = "XX"', "node.jurisdiction", "bad country code 'XX'"


def _break_key_mode(node: Path) -> tuple[str, str, str]:
    (node / "node.key").chmod(0o644)
    return 'key_file = "node.key"', "node.key_file", "accessible by group or others"


def _break_missing_key(node: Path) -> tuple[str, str, str]:
    (node / "node.key").unlink()
    return 'key_file = "node.key"', "node.key_file", "no such key file"


def _break_duplicate_peer(node: Path) -> tuple[str, str, str]:
    peer = f'\n[[peers]]\nname = "ala.example.kz"\njurisdiction = "KZ"\nkeys = ["{KEY_X}"]\n'
    with (node / "node.toml").open("a") as f:
        f.write(peer + peer.replace('"ala.example.kz"', '"ala.example.kz" '))
    return 'name = "ala.example.kz" ', "peers[1].name", "duplicate peer 'ala.example.kz'"


def _break_retention(node: Path) -> tuple[str, str, str]:
    edit(node, "content_min_days = 0", "content_min_days = 400")
    return "content_min_days = 400", "retention.content_min_days", "is greater than"


def edit(node: Path, old: str, new: str) -> None:
    file = node / "node.toml"
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new, 1))


BREAKS = {
    "unknown key": _break_unknown_key,
    "bad country": _break_country,
    "key mode": _break_key_mode,
    "missing key": _break_missing_key,
    "duplicate peer": _break_duplicate_peer,
    "retention": _break_retention,
}


@pytest.mark.parametrize("break_it", BREAKS.values(), ids=BREAKS.keys())
def test_check_reports_each_problem_as_file_line(tmp_path: Path, break_it: object) -> None:
    assert callable(break_it)
    init(tmp_path, "msk.example.ru", "RU")
    line_text, key, reason = break_it(tmp_path)
    file = tmp_path / "node.toml"
    expected_line = file.read_text().splitlines().index(line_text) + 1
    done = relay("check", tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    (problem,) = problem_lines(done.stderr)
    assert problem["file"] == str(file)
    assert int(problem["line"]) == expected_line
    assert problem["key"] == key
    assert reason in problem["reason"]


def test_check_json_lists_problems(tmp_path: Path) -> None:
    init(tmp_path, "msk.example.ru", "RU")
    _break_country(tmp_path)
    _break_retention(tmp_path)
    done = relay("check", tmp_path, "--json")
    assert done.returncode == 2
    result = json.loads(done.stdout)
    assert result["ok"] is False
    lines = (tmp_path / "node.toml").read_text().splitlines()
    assert [(p["line"], p["key"]) for p in result["errors"]] == [
        (lines.index('jurisdiction = "XX"') + 1, "node.jurisdiction"),
        (lines.index("content_min_days = 400") + 1, "retention.content_min_days"),
    ]
    assert all(p["file"] == str(tmp_path / "node.toml") for p in result["errors"])


# --- in process: exit codes and the demo configs -------------------------------


def test_exit_codes() -> None:
    assert cli.exit_code(ConfigErrors([])) == 2
    assert cli.exit_code(PolicyRefused("no", "rule-1")) == 3
    assert cli.exit_code(RelayError("boom")) == 1
    assert cli.main(["--version"]) == 0
    assert cli.main(["no-such-command"]) == 2
    assert cli.main([]) == 2


def test_demo_configs_work_as_the_readme_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = {"ru": ("ru.demo.test", 8701, "RU"), "kz": ("kz.demo.test", 8702, "KZ")}
    nodes["de"] = ("de.demo.test", 8703, "DE")
    for n in nodes:
        shutil.copytree(ROOT / "config" / n, tmp_path / n)
        assert not (tmp_path / n / "node.key").exists()
        assert cli.main(["key", "generate", str(tmp_path / n)]) == 0
    capsys.readouterr()
    for n in nodes:
        for other, (name, port, cc) in nodes.items():
            if other == n:
                continue
            assert cli.main(["key", "show", str(tmp_path / other)]) == 0
            key = capsys.readouterr().out.strip()
            parse_public_key(key)
            argv = ["peer", "add", str(tmp_path / n), "--name", name]
            argv += ["--url", f"http://127.0.0.1:{port}", "--jurisdiction", cc, "--key", key]
            assert cli.main(argv) == 0
        assert cli.main(["check", str(tmp_path / n)]) == 0
        name, _, cc = nodes[n]
        storage = f"storage sqlite:{tmp_path / n / 'relay.db'}"
        assert capsys.readouterr().out == f"ok: {name} ({cc}), 2 peers, 0 mailboxes, {storage}\n"
    assert cli.main(["key", "generate", str(tmp_path / "ru")]) == 1  # never overwrites
