"""Man pages generated from the click command tree, the settings and the exit codes.

``python -m gridtool.manpage DIR`` writes ``gridtool.1``, ``gridtool-agent.8`` and
``gridtool.conf.5`` into DIR (``scripts/gen-man`` does it for ``man/``); with
``--check`` it writes nothing and exits 1 when a file differs from what it would write.

Everything a user can type comes from the code: commands, usage lines, options,
metavars, choices, defaults and help from click; settings, types, defaults and
environment variables from :mod:`gridtool.config`; exit statuses from
:data:`gridtool.errors.EXIT_CODES`. The only prose kept here is what the code
cannot say: what each setting means (:data:`MEANINGS`) and the pages' framing.
The output depends on nothing but the code (the date field is the version), so
the committed pages can be compared with fresh output in the tests.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import click

from gridtool import __version__

#: What each ``Config`` field means, for gridtool.conf(5) and the ENVIRONMENT sections.
#: Written in the mini markup of :func:`markup`: ```code``` is bold, ``*word*`` italic.
#: Every ``Config`` field needs one: the generator (and a unit test) refuse a field without.
MEANINGS: dict[str, str] = {
    "endpoints": "The etcd client endpoints, each `HOST:PORT`. A request goes to the endpoint "
                 "that last answered and fails over to the next one in turn.",
    "prefix": "The key prefix every gridtool record lives under; it must start and end "
              "with `/`. Fleets with different prefixes can share one etcd cluster.",
    "user": "The etcd user to authenticate as. It needs `password` (or `password_file`).",
    "password": "The etcd password of `user`. Prefer `password_file`, which keeps the "
                "secret out of the configuration file.",
    "password_file": "A file holding the etcd password (surrounding white space is "
                     "stripped); read only when `password` is not set.",
    "ca_cert": "A PEM file of the CA certificate that signed etcd's TLS server "
               "certificates; setting it makes gridtool talk TLS to etcd.",
    "cert": "A PEM client certificate for TLS client authentication to etcd (with `key`).",
    "key": "The PEM private key of `cert`.",
    "timeout": "Seconds to keep trying the registry before giving up with exit status 4; "
               "each endpoint gets an equal share of it for one attempt (at least 1 second).",
    "host": "This host's name in the registry. The agent needs it.",
    "libvirt_uri": "The libvirt URI the agent watches, such as `qemu:///system` or "
                   "`xen:///system`. The agent needs it.",
    "ttl": "Seconds of the host's lease. The agent renews it every *ttl*/3 seconds; when "
           "the agent dies its host record vanishes after *ttl* seconds and its guests "
           "show as `unknown`.",
    "resync_interval": "Seconds between the agent's full resyncs of libvirt into the "
                       "registry (besides the one at start, the one after each reconnect "
                       "and the write on each libvirt lifecycle event).",
    "labels": "This host's labels, used by placement: a guest can require or prefer "
              "labels, and hosts labelled `overflow` are used only when no other host fits.",
    "storage": "The shared storage this host can reach (ids such as an AoE shelf or an "
               "iSCSI target); a guest whose volumes live on shared storage is placed only "
               "on hosts that reach all of it.",
    "intruder_policy": "What the agent does with a guest running on this host while another "
                       "host holds its fence: `pause` suspends it and keeps its memory for an "
                       "operator, `destroy` stops it at once. One of `pause` and `destroy`.",
    "watchdog": "A Linux watchdog device, such as `/dev/watchdog` (hardware or the softdog "
                "module), that the agent pets while its lease is safe. If the agent hangs "
                "while HA guests run, the watchdog resets the host before their fences can "
                "expire. Unset: no watchdog.",
    "watchdog_timeout": "The watchdog device's timeout in seconds, as set on the device "
                        "(the agent does not set it). The agent pets the watchdog only while "
                        "a reset that far away still comes before the lease can expire.",
    "manager": "Whether the agent also runs a candidate of the HA manager (as `gridtool "
               "manager run` does): the candidates elect one leader in etcd, which restarts "
               "the HA guests of dead hosts elsewhere.",
    "hook_socket": "The unix socket on which the agent answers the libvirt fence hook "
                   "(`/etc/libvirt/hooks/qemu`): may this host start, restore or receive "
                   "this guest? The hook refuses when the agent does not hold every fence "
                   "of the guest, or does not answer in time. Unset: no hook server.",
    "shared_patterns": "Shell glob patterns of disk source paths that live on storage "
                       "several hosts can see (AoE, iSCSI by-path). A guest with such a disk "
                       "must run on one host at a time, so gridtool fences it. Disks marked "
                       "shareable and iSCSI network disks are always shared.",
    "shared_pools": "libvirt storage pools whose volumes are shared between hosts "
                    "(for disks of type volume).",
    "images_dir": "Where templates' golden images (`templates/`) and clones' copy-on-write "
                  "overlays (`clones/<host>/`) live. Shared storage (NFS, a cluster file "
                  "system) mounted at the same path on every host, so any host can clone "
                  "any template.",
    "source": "Not a setting: where the values came from, the configuration file's path or "
              "`defaults`. It cannot be set.",
}

#: Nagios plugin statuses that ``gridtool check`` uses, when that command exists.
NAGIOS_CODES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}

PAGE_DATE = f"gridtool {__version__}"
SOURCE = f"gridtool {__version__}"
GENERATED = (".\\\" Generated by gridtool.manpage from the code; do not edit.\n"
             ".\\\" Regenerate with scripts/gen-man.\n")


# -- roff escaping -------------------------------------------------------------

_SPECIAL = {"\\": r"\e", "^": r"\(ha", "~": r"\(ti", "`": r"\(ga"}


def _chars(text: str, code: bool) -> str:
    out = []
    for ch in text:
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif code and ch == "-":
            out.append(r"\-")
        elif code and ch == "'":
            out.append(r"\(aq")
        elif ord(ch) > 126:
            out.append(f"\\[u{ord(ch):04X}]")
        elif ord(ch) < 32 and ch != "\n":
            out.append(" ")
        else:
            out.append(ch)
    return _line_start("".join(out))


def _line_start(text: str) -> str:
    """Keep a leading ``.`` or ``'`` from being read as a request."""
    return "\n".join("\\&" + ln if ln[:1] in (".", "'") else ln for ln in text.split("\n"))


def code(text: str) -> str:
    """Literal text (commands, options, paths): every hyphen is ``\\-``."""
    return _chars(text, code=True)


def prose(text: str) -> str:
    """Running text: hyphens that start a word (``--json``, ``-h``) become ``\\-``."""
    escaped = _chars(text, code=False)
    escaped = re.sub(r"(?:^|(?<=[\s(\[\"'=,/|]))-+", lambda m: r"\-" * len(m.group()), escaped)
    # paths, options and names_with_underscores are not hyphenated
    return " ".join("\\%" + w if re.search(r"[/_]|\\-", w) else w for w in escaped.split(" "))


def _nohyphen(escaped: str) -> str:
    """Keep groff from hyphenating the words of a literal (``grid-tool.conf``)."""
    return "\\%" + escaped.replace(" ", " \\%")


def bold(text: str) -> str:
    return rf"\fB{_nohyphen(code(text))}\fR"


def italic(text: str) -> str:
    return rf"\fI{_nohyphen(code(text))}\fR"


def _decapitalize(text: str) -> str:
    """``The etcd ...`` -> ``the etcd ...`` (but not ``PEM ...`` or ``URI ...``)."""
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def markup(text: str) -> str:
    """Prose with ```code``` (bold literal) and ``*word*`` (italic) spans."""
    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", text)):
        if i % 2:
            out.append(bold(part))
            continue
        for j, piece in enumerate(re.split(r"\*([^*\s][^*]*)\*", part)):
            out.append(italic(piece) if j % 2 else prose(piece))
    return "".join(out)


def _arg(text: str) -> str:
    """A macro argument, quoted."""
    return '"' + text.replace('"', r"\(dq") + '"'


def _word_starts(line: str) -> str:
    """Move each ``\\%`` to the start of its word: inside a word it marks a hyphenation
    point instead (``(\\fB\\%/tmp`` would break after the parenthesis)."""
    words = line.split(" ")
    return " ".join("\\%" + w.replace("\\%", "") if "\\%" in w else w for w in words)


def _lines(*chunks: str) -> str:
    """Input lines: requests as given, text already escaped by the functions above."""
    return "\n".join(_word_starts(c) for c in chunks) + "\n"


def see(page: str, section: int | str) -> str:
    return rf"\fB{code(page)}\fR({section})"


# -- reading the click tree ----------------------------------------------------


@dataclass
class Node:
    """One command of the tree with the context click would give it."""

    command: click.Command
    ctx: click.Context

    @property
    def path(self) -> str:
        return self.ctx.command_path

    @property
    def depth(self) -> int:
        depth, ctx = 0, self.ctx
        while ctx.parent is not None:
            depth, ctx = depth + 1, ctx.parent
        return depth


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    return click.Context(command, info_name=name, parent=parent, **command.context_settings)


def walk(command: click.Command, name: str, parent: click.Context | None = None
         ) -> Iterator[Node]:
    """Every visible command under ``command`` (itself first), depth first, sorted by name."""
    ctx = _context(command, name, parent)
    yield Node(command, ctx)
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            child = command.get_command(ctx, sub)
            if child is not None and not child.hidden:
                yield from walk(child, sub, ctx)


def help_text(command: click.Command) -> str:
    """The command's help as click shows it: dedented, cut at ``\\f``."""
    return inspect.cleandoc(command.help or "").split("\f")[0].strip()


def paragraphs(text: str) -> list[tuple[str, list[str]]]:
    """``("p", [text])`` for prose and ``("b", lines)`` for click's ``\\b`` blocks."""
    out: list[tuple[str, list[str]]] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.split("\n")
        if lines and lines[0].strip() == "\b":
            out.append(("b", [ln.rstrip() for ln in lines[1:]]))
        elif block.strip():
            out.append(("p", [" ".join(ln.strip() for ln in lines)]))
    return out


def _dedent(lines: list[str]) -> list[str]:
    indent = min((len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()), default=0)
    return [ln[indent:] for ln in lines]


def _split_example(lines: list[str]) -> tuple[str | None, list[str]]:
    """A ``\\b`` block's heading (``Example:``) and its dedented body lines."""
    if len(lines) > 1 and lines[0].rstrip().endswith(":") and lines[1][:1].isspace():
        return lines[0].strip(), _dedent(lines[1:])
    return None, _dedent(lines)


def first_line(command: click.Command) -> str:
    """The help's first paragraph (click's short help, unshortened)."""
    return help_text(command).split("\n\n")[0].replace("\n", " ").strip()


def summary(command: click.Command, name: str) -> str:
    """For NAME: the first line without a leading ``name:``, capital or final period."""
    first = first_line(command)
    if first.lower().startswith(name.lower() + ":"):
        first = first[len(name) + 1:].strip()
    return _decapitalize(first).rstrip(".")


def _is_unset(value: Any) -> bool:
    return value is None or type(value).__name__ == "Sentinel" or value == ()


def _default(opt: click.Option, ctx: click.Context) -> str | None:
    if isinstance(opt.show_default, str):
        return opt.show_default
    if opt.is_flag and not opt.secondary_opts:
        return None
    value = opt.get_default(ctx, call=False)
    if _is_unset(value) or callable(value):
        return None
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if opt.is_flag:
        return (opt.opts if value else opt.secondary_opts)[0]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _metavar(opt: click.Option) -> str:
    if opt.is_flag or opt.count:
        return ""
    if opt.metavar is not None:
        return italic(opt.metavar)
    if isinstance(opt.type, click.Choice):
        return "{" + "|\\:".join(bold(str(c)) for c in opt.type.choices) + "}"
    name = opt.type.name.upper()
    return italic(name + ("..." if opt.nargs != 1 else ""))


def option_tag(opt: click.Option) -> str:
    """``\\fB\\-h\\fR, \\fB\\-\\-help\\fR`` plus the metavar or choices."""
    names = ", ".join(bold(o) for o in sorted(opt.opts, key=len))
    if opt.secondary_opts:
        names += " / " + ", ".join(bold(o) for o in opt.secondary_opts)
    meta = _metavar(opt)
    return f"{names} {meta}" if meta else names


def option_body(opt: click.Option, ctx: click.Context) -> str:
    parts = [prose(" ".join((opt.help or "").split()))]
    if opt.required:
        parts.append("Required.")
    if opt.multiple:
        parts.append("May be given more than once.")
    default = _default(opt, ctx)
    if default is not None:
        parts.append(f"Default: {bold(default)}.")
    envvars = [opt.envvar] if isinstance(opt.envvar, str) else list(opt.envvar or ())
    if envvars:
        parts.append("Environment: " + ", ".join(bold(e) for e in envvars) + ".")
    if getattr(opt, "deprecated", False):
        parts.append("Deprecated.")
    return " ".join(p for p in parts if p)


def visible_options(node: Node, with_help: bool = False) -> list[click.Option]:
    help_opt = node.command.get_help_option(node.ctx)
    opts = [p for p in node.command.params if isinstance(p, click.Option) and not p.hidden]
    if with_help and help_opt is not None:
        opts.append(help_opt)
    return opts


def options_block(node: Node, with_help: bool = False) -> str:
    out = []
    for opt in visible_options(node, with_help):
        out.append(_lines(".TP", option_tag(opt), option_body(opt, node.ctx)))
    return "".join(out)


def usage(node: Node, global_options: bool = False) -> str:
    """``\\fBgridtool host show\\fR [\\fIOPTIONS\\fR] \\fINAME\\fR``"""
    pieces = re.split(r"([A-Z][A-Z0-9_:,.-]*[A-Z0-9]|[A-Z])",
                      " ".join(node.command.collect_usage_pieces(node.ctx)))
    rendered = "".join(italic(p) if i % 2 else code(p) for i, p in enumerate(pieces))
    path = bold(node.path)
    if global_options and " " in node.path:
        prog, rest = node.path.split(" ", 1)
        path = rf"{bold(prog)} [\fIGLOBAL OPTIONS\fR] {bold(rest)}"
    return f"{path} {rendered}".rstrip()


def help_blocks(command: click.Command, skip_first: bool = False,
                examples: bool = True) -> str:
    """The help's paragraphs as ``.PP`` text and its ``\\b`` blocks as ``.nf`` blocks."""
    out = []
    paras = paragraphs(help_text(command))
    if skip_first and paras and paras[0][0] == "p":
        paras = paras[1:]
    for kind, lines in paras:
        if kind == "p":
            out.append(_lines(".PP", prose(lines[0])))
        elif examples:
            out.append(example_block(lines))
    return "".join(out)


def example_block(lines: list[str]) -> str:
    heading, body = _split_example(lines)
    head = _lines(".PP", prose(heading)) if heading else ".PP\n"
    text = [code(ln) if ln.strip() else r"\&" for ln in body]
    return head + _lines(".RS 4", ".nf", *text, ".fi", ".RE")


def example_lines(command: click.Command) -> list[list[str]]:
    """The body lines of each ``\\b`` block of a command's help."""
    return [_split_example(lines)[1] for kind, lines in paragraphs(help_text(command))
            if kind == "b"]


def header(title: str, section: int, manual: str) -> str:
    return GENERATED + _lines(
        f".TH {_arg(code(title.upper()))} {section} {_arg(code(PAGE_DATE))} "
        f"{_arg(code(SOURCE))} {_arg(manual)}")


def section(name: str) -> str:
    return f".SH {_arg(name)}\n"


def tp(tag: str, body: str) -> str:
    return _lines(".TP", tag, body)


# -- settings ------------------------------------------------------------------


class MissingMeaning(Exception):
    """A ``Config`` field has no entry in :data:`MEANINGS`."""


def _settings() -> tuple[list[Any], dict[str, str]]:
    from gridtool.config import _SECTIONS, Config

    config_fields = list(fields(Config))
    missing = [f.name for f in config_fields if f.name not in MEANINGS]
    if missing:
        raise MissingMeaning(f"no meaning for Config field(s) {', '.join(missing)}: "
                             "add them to MEANINGS in gridtool/manpage.py")
    return config_fields, dict(_SECTIONS)


def _type_text(annotation: Any) -> str:
    text = str(annotation)
    if "tuple" in text:
        return "list (items separated by commas or white space)"
    if text == "bool":
        from gridtool import config

        words = getattr(config, "_BOOLS", {"yes": True, "no": False})
        def listed(value: bool) -> str:
            return ", ".join(sorted((w for w, v in words.items() if v is value), key=str.isdigit))

        return f"boolean ({listed(True)} / {listed(False)})"
    if text == "int":
        return "integer, at least 2"
    if text == "float":
        return "number greater than 0"
    if "str" in text:
        return "string"
    return text


def _default_text(f: Any) -> str:
    value = f.default if f.default is not MISSING else None
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_env(name: str) -> str:
    return f"GRIDTOOL_{name.upper()}"


def _setting_options() -> dict[str, list[tuple[str, str]]]:
    """setting -> [(option, program)] for the options that override it."""
    from agents.main import main as agent_main
    from gridtool.cli.main import cli

    _, sections = _settings()
    found: dict[str, list[tuple[str, str]]] = {}
    for command, prog in ((cli, "gridtool"), (agent_main, "gridtool-agent")):
        for param in command.params:
            if isinstance(param, click.Option) and param.name in sections and not param.hidden:
                found.setdefault(param.name, []).append((max(param.opts, key=len), prog))
    return found


def environment_settings() -> str:
    """ENVIRONMENT entries for every ``GRIDTOOL_<SETTING>``."""
    _, sections = _settings()
    out = []
    for name, sect in sections.items():
        first = _decapitalize(re.split(r"(?<=\.)\s", MEANINGS[name])[0])
        out.append(tp(bold(setting_env(name)),
                      f"{bold(name)} in {bold(f'[{sect}]')}: " + markup(first)))
    return "".join(out)


def exit_status(check_note: bool) -> str:
    from gridtool.errors import EXIT_CODES

    out = [section("EXIT STATUS")]
    for code_, meaning in sorted(EXIT_CODES.items()):
        out.append(tp(bold(str(code_)), prose(meaning[:1].upper() + meaning[1:] + ".")))
    out.append(tp(bold("130"), "Interrupted (SIGINT)."))
    if check_note:
        statuses = ", ".join(f"{n} {s}" for n, s in sorted(NAGIOS_CODES.items()))
        out.append(_lines(".PP", markup(
            f"`gridtool check` does not use these: it exits with the Nagios plugin "
            f"statuses {statuses}, so that monitoring can run it as a plugin.")))
    return "".join(out)


# -- gridtool(1) ---------------------------------------------------------------


def _all_envvars(nodes: list[Node]) -> list[tuple[str, str]]:
    """(variable, where) for option envvars of the tree."""
    out: list[tuple[str, str]] = []
    for node in nodes:
        for opt in visible_options(node):
            for env in [opt.envvar] if isinstance(opt.envvar, str) else list(opt.envvar or ()):
                out.append((env, f"{node.path} {max(opt.opts, key=len)}"))
    return out


def render_gridtool() -> str:
    from gridtool.cli.main import cli
    from gridtool.cli.output import JSON_VERSION
    from gridtool.config import AGENT_CONFIG, SYSTEM_CONFIG
    from gridtool.labstate import DEFAULT_LAB_DIR, state_path

    nodes = list(walk(cli, "gridtool"))
    root, rest = nodes[0], nodes[1:]
    leaves = [n for n in rest if not isinstance(n.command, click.Group)]
    tops = [n for n in rest if n.depth == 1]
    out = [header("gridtool", 1, "gridtool manual")]

    out.append(section("NAME"))
    out.append(_lines(rf"gridtool \- {prose(summary(cli, 'gridtool'))}"))

    out.append(section("SYNOPSIS"))
    synopsis = [rf"{bold('gridtool')} [\fIGLOBAL OPTIONS\fR] \fICOMMAND\fR "
                rf"[\fIOPTIONS\fR] [\fIARGUMENTS\fR]"]
    synopsis += [usage(node, global_options=True) for node in leaves]
    out.append(_lines(".nh", ".ad l", *"\n.br\n".join(synopsis).split("\n"), ".ad", ".hy"))

    out.append(section("DESCRIPTION"))
    out.append(_lines(markup(
        "`gridtool` runs a fleet of Xen and KVM hypervisor hosts through libvirt. On each host "
        "`gridtool-agent`(8) mirrors the host and its guests into a registry in etcd; "
        "`gridtool` reads that registry, and can start a local lab of etcd and simulated "
        "hosts to try it all out.")))
    out.append(help_blocks(cli, skip_first=True, examples=False))
    out.append(_lines(".PP", markup(
        "Settings come from a configuration file, then `GRIDTOOL_`*SETTING* environment "
        "variables, then the global options; `gridtool.conf`(5) lists them and says which "
        "file is read.")))
    out.append(_lines(".PP", markup(
        "With `--json`, a command prints one JSON document on standard output: an object "
        f"whose member `\"v\"` is the format version ({JSON_VERSION}). Tables and JSON go "
        "to standard output; warnings and errors go to standard error, each on one line "
        "starting `gridtool:`, and an error ends the command with a documented exit "
        "status (see EXIT STATUS).")))
    out.append(_lines(".PP", "The commands are:"))
    for node in tops:
        out.append(tp(bold(node.ctx.info_name or ""), prose(first_line(node.command))))

    out.append(section("GLOBAL OPTIONS"))
    out.append(_lines(".PP", markup(
        "Given before the command, e.g. `gridtool --endpoints 10.0.0.1:2379 host list`. "
        "Every command also accepts the help option.")))
    out.append(options_block(root, with_help=True))

    out.append(section("COMMANDS"))
    for node in rest:
        out.append(f".SS {_arg(code(node.path))}\n")
        out.append(_lines(".PP", usage(node)))
        out.append(help_blocks(node.command))
        if isinstance(node.command, click.Group):
            subs = [n for n in rest if n.ctx.parent is node.ctx]
            out.append(_lines(".PP", "Commands: " + ", ".join(
                bold(n.ctx.info_name or "") for n in subs) + "."))
        if visible_options(node):
            out.append(_lines(".PP", "Options:", ".RS 4"))
            out.append(options_block(node))
            out.append(".RE\n")

    out.append(exit_status(check_note=any(n.path == "gridtool check" for n in rest)))

    out.append(section("ENVIRONMENT"))
    out.append(tp(bold("GRIDTOOL_CONFIG"), markup(
        "The configuration file to read, as `--config`; it takes precedence over the lab's "
        "and the system's file.")))
    out.append(tp(bold("GRIDTOOL_LAB_DIR"), markup(
        f"The lab directory (default `{DEFAULT_LAB_DIR}`), as `--lab-dir` of the `lab` "
        "commands. Every command also looks there for a running lab's configuration, used "
        "only when the directory is the user's own (see `gridtool.conf`(5)).")))
    out.append(tp(bold("GRIDTOOL_DEBUG"), markup(
        "When set and not empty, an internal error prints a Python traceback instead of "
        "one line.")))
    listed = {"GRIDTOOL_CONFIG", "GRIDTOOL_LAB_DIR", "GRIDTOOL_DEBUG"}
    for env, where in _all_envvars(nodes):
        if env not in listed:
            listed.add(env)
            out.append(tp(bold(env), markup(f"Default for `{where}`.")))
    out.append(environment_settings())

    lab_conf = DEFAULT_LAB_DIR / "gridtool.conf"
    out.append(section("FILES"))
    out.append(tp(bold(str(SYSTEM_CONFIG)), markup(
        "The configuration file when `--config`, `GRIDTOOL_CONFIG` and a running lab do not "
        "name another; a missing file means the defaults. See `gridtool.conf`(5).")))
    out.append(tp(bold(str(AGENT_CONFIG)), markup(
        "The agent's configuration file; see `gridtool-agent`(8).")))
    out.append(tp(bold(str(DEFAULT_LAB_DIR)), markup(
        "The lab directory (`GRIDTOOL_LAB_DIR`, `--lab-dir`): the lab's etcd data, each "
        "simulated host's libvirtd and agent files, and the logs.")))
    out.append(tp(bold(str(state_path(DEFAULT_LAB_DIR))), markup(
        "The lab's state: its processes, etcd endpoints and configuration file. While the "
        f"lab's etcd runs, commands read the lab's configuration (`{lab_conf}`) unless "
        "`--config` or `GRIDTOOL_CONFIG` names another, and only when the lab directory, "
        "this file and the configuration file are the user's own; `lab up` prints the "
        "`export GRIDTOOL_CONFIG=`... line that names it.")))

    out.append(section("EXAMPLES"))
    seen: set[str] = set()
    blocks: list[str] = []
    for node in nodes:
        for body in example_lines(node.command):
            if all(ln in seen for ln in body if ln.strip()):
                continue
            seen.update(body)
            blocks.extend(body)
    out.append(_lines(".PP", "The examples of all commands:", ".RS 4", ".nf",
                      *[code(ln) if ln.strip() else r"\&" for ln in blocks], ".fi", ".RE"))

    out.append(section("SEE ALSO"))
    out.append(_lines(", ".join([see("gridtool-agent", 8), see("gridtool.conf", 5),
                                 see("etcd", 1), see("etcdctl", 1), see("virsh", 1),
                                 see("libvirtd", 8)])))
    return "".join(out)


# -- gridtool-agent(8) ---------------------------------------------------------


def agent_events() -> list[str]:
    """Every ``event=NAME`` the agent's sources log, sorted."""
    import agents

    found: set[str] = set()
    for source in sorted(Path(agents.__file__).parent.glob("*.py")):
        found.update(re.findall(r"event=([a-z][a-z0-9_]*)", source.read_text()))
    return sorted(e for e in found if not e.endswith("_"))


def render_agent() -> str:
    from agents.main import main as agent_main
    from gridtool.config import AGENT_CONFIG
    from gridtool.labstate import DEFAULT_LAB_DIR

    node = next(walk(agent_main, "gridtool-agent"))
    out = [header("gridtool-agent", 8, "gridtool manual")]

    out.append(section("NAME"))
    out.append(_lines(rf"gridtool\-agent \- {prose(summary(agent_main, 'gridtool-agent'))}"))

    out.append(section("SYNOPSIS"))
    out.append(_lines(usage(node)))

    out.append(section("DESCRIPTION"))
    out.append(help_blocks(agent_main, skip_first=True, examples=False))
    out.append(_lines(".PP", markup(
        "`gridtool-agent` runs on each hypervisor host. It publishes the host's record "
        "under an etcd lease of *ttl* seconds, which it renews every *ttl*/3 seconds, and "
        "writes a record for every libvirt guest on the host: all of them at start, after "
        "each reconnection and every *resync_interval* seconds, and the changed guest on "
        "each libvirt lifecycle event in between. It reconnects to libvirt and etcd on its "
        "own, backing off up to 5 seconds.")))
    out.append(_lines(".PP", markup(
        "When the agent dies, the host's record vanishes as soon as the lease expires and "
        "`gridtool guest list` shows the host's guests as `unknown`.")))
    out.append(_lines(".PP", markup(
        "For guests with disks on shared storage it also takes part in fencing, so that no "
        "such guest runs on two hosts at once; see `shared_patterns`, `intruder_policy` and "
        "`watchdog` in `gridtool.conf`(5).")))
    out.append(_lines(".PP", markup(
        "It needs the settings `host` and `libvirt_uri`; they and the others come from the "
        f"configuration file (`{AGENT_CONFIG}` unless `--config` or `GRIDTOOL_CONFIG` "
        "names another), then the environment, then the options; see `gridtool.conf`(5).")))

    out.append(section("OPTIONS"))
    out.append(options_block(node, with_help=True))

    out.append(section("SIGNALS"))
    out.append(tp(bold("SIGTERM") + ", " + bold("SIGINT"), markup(
        "Stop: the agent revokes its lease, so the host vanishes from the registry at once "
        "instead of after *ttl* seconds, closes its connections and exits 0.")))
    out.append(tp(bold("SIGKILL"), markup(
        "(or a crash, or a lost network) The lease is no longer renewed: the host vanishes "
        "when it expires, *ttl* seconds later.")))

    out.append(section("LOGGING"))
    out.append(_lines(".PP", markup(
        "The agent logs to standard error, one line per event at or above `--log-level`: "
        "the time, the level, then `key=value` fields, the first being `event=`*NAME*. "
        "For example:")))
    out.append(_lines(".RS 4", ".nf",
                      code("2024-05-01 12:00:00,000 INFO event=host_registered host=hv1 "
                           "lease=694d8a2f1b3c ttl=10"),
                      ".fi", ".RE"))
    events = agent_events()
    out.append(_lines(".PP", "Events include " + ", ".join(bold(e) for e in events[:-1])
                      + f" and {bold(events[-1])}."))

    from gridtool.errors import EXIT_CODES

    out.append(section("EXIT STATUS"))
    out.append(tp(bold("0"), "Stopped by SIGTERM or SIGINT."))
    for status in (1, 2):
        out.append(tp(bold(str(status)), prose(EXIT_CODES[status][:1].upper()
                                               + EXIT_CODES[status][1:] + ".")))
    out.append(_lines(".PP", markup(
        "A non-zero status comes from a problem at start, such as a missing `--host` "
        "(status 2); other errors at start exit with the statuses listed in `gridtool`(1). "
        "Once running, the agent rides out registry and libvirt outages.")))

    out.append(section("ENVIRONMENT"))
    out.append(tp(bold("GRIDTOOL_CONFIG"), markup(
        "The configuration file to read when `--config` is not given.")))
    out.append(tp(bold("GRIDTOOL_LAB_DIR"), markup(
        f"The lab directory (default `{DEFAULT_LAB_DIR}`): while a lab runs there, its "
        "configuration is read unless a file is named.")))
    out.append(environment_settings())

    out.append(section("FILES"))
    out.append(tp(bold(str(AGENT_CONFIG)), markup(
        "The configuration file; a missing file means the defaults. See `gridtool.conf`(5).")))

    out.append(section("EXAMPLES"))
    for body in example_lines(agent_main):
        out.append(_lines(".RS 4", ".nf", *[code(ln) for ln in body], ".fi", ".RE"))

    out.append(section("SEE ALSO"))
    out.append(_lines(", ".join([see("gridtool", 1), see("gridtool.conf", 5), see("etcd", 1),
                                 see("libvirtd", 8)])))
    return "".join(out)


# -- gridtool.conf(5) ----------------------------------------------------------

#: The example file in gridtool.conf(5); a unit test loads it.
EXAMPLE_CONF = """\
[registry]
endpoints = 10.0.0.1:2379, 10.0.0.2:2379, 10.0.0.3:2379
user = hv1
password_file = /etc/gridtool/etcd-password
ca_cert = /etc/gridtool/ca.pem
cert = /etc/gridtool/hv1.pem
key = /etc/gridtool/hv1-key.pem

[agent]
host = hv1
libvirt_uri = qemu:///system
ttl = 10
labels = dedicated
storage = aoe-e1, iscsi-iqn.2024-01.com.example:vol

[storage]
shared_patterns = /dev/etherd/*, /dev/disk/by-path/*-iscsi-*
shared_pools = san
"""


def render_conf() -> str:
    from gridtool.config import AGENT_CONFIG, SECRET_SETTINGS, SYSTEM_CONFIG
    from gridtool.labstate import DEFAULT_LAB_DIR

    config_fields, sections = _settings()
    by_name = {f.name: f for f in config_fields}
    options = _setting_options()
    out = [header("gridtool.conf", 5, "gridtool manual")]

    out.append(section("NAME"))
    out.append(_lines(r"gridtool.conf \- configuration of gridtool and gridtool\-agent"))

    out.append(section("SYNOPSIS"))
    out.append(_lines(bold(str(SYSTEM_CONFIG)), ".br", bold(str(AGENT_CONFIG))))

    section_names = list(dict.fromkeys(sections.values()))
    out.append(section("DESCRIPTION"))
    out.append(_lines(markup(
        "`gridtool`(1) and `gridtool-agent`(8) read their settings from an INI file: "
        "`name = value` lines in the sections " + ", ".join(f"`[{s}]`" for s in section_names)
        + ". A setting in the wrong section, an unknown setting and a `[DEFAULT]` section are "
        "errors, and so is a value of the wrong type; the error names the setting and the "
        "command exits with status 2.")))
    out.append(_lines(".PP", markup(
        "Each setting can also be given in the environment as `GRIDTOOL_`*SETTING* (the name "
        "in capitals), and some as command-line options. An option beats the environment, "
        "which beats the file.")))
    out.append(_lines(".PP", markup(
        "The file read is the one named by `--config`, else by `GRIDTOOL_CONFIG`, else the "
        f"running lab's (`{DEFAULT_LAB_DIR}/gridtool.conf`, found through "
        f"`{DEFAULT_LAB_DIR}/lab.json` or `GRIDTOOL_LAB_DIR`), else `{SYSTEM_CONFIG}` "
        f"(for the agent `{AGENT_CONFIG}`). A missing default file means the defaults.")))
    out.append(_lines(".PP", markup(
        "A running lab's file is used only when the lab directory, its `lab.json` and the "
        "configuration file are each owned by the user running the command, not writable "
        "by group or others and not symbolic links; otherwise the command prints a "
        "one-line warning and goes on to the system file, so that a file planted in "
        "`/tmp` cannot redirect another user's commands. A lab process whose PID the user "
        "may not signal does not count as running.")))

    out.append(section("SETTINGS"))
    for sect in section_names:
        out.append(f".SS {_arg(code(f'[{sect}]'))}\n")
        for name, where in sections.items():
            if where != sect:
                continue
            f = by_name[name]
            facts = [f"Type: {prose(_type_text(f.type))}.",
                     f"Default: {bold(_default_text(f))}.",
                     f"Environment: {bold(setting_env(name))}."]
            opts = options.get(name, [])
            if opts:
                facts.append("Option: " + ", ".join(f"{bold(o)} of {bold(p)}" for o, p in opts)
                             + ".")
            if name in SECRET_SETTINGS:
                facts.append(markup("Secret: `gridtool` never prints it."))
            out.append(_lines(".TP", bold(name), markup(MEANINGS[name]), ".br",
                              " ".join(facts)))
    others = [f for f in config_fields if f.name not in sections]
    if others:
        out.append(f".SS {_arg('Derived values')}\n")
        for f in others:
            out.append(tp(bold(f.name), markup(MEANINGS[f.name])))

    out.append(section("EXAMPLES"))
    out.append(_lines(".PP", markup(f"An agent's `{AGENT_CONFIG}` with TLS and a password file:"),
                      ".RS 4", ".nf",
                      *[code(ln) if ln else r"\&" for ln in EXAMPLE_CONF.rstrip().split("\n")],
                      ".fi", ".RE"))

    out.append(section("FILES"))
    out.append(tp(bold(str(SYSTEM_CONFIG)), markup("The file `gridtool` reads by default.")))
    out.append(tp(bold(str(AGENT_CONFIG)), markup("The file `gridtool-agent` reads by default.")))

    out.append(section("SEE ALSO"))
    out.append(_lines(", ".join([see("gridtool", 1), see("gridtool-agent", 8)])))
    return "".join(out)


# -- writing -------------------------------------------------------------------

PAGES: dict[str, Callable[[], str]] = {
    "gridtool.1": render_gridtool,
    "gridtool-agent.8": render_agent,
    "gridtool.conf.5": render_conf,
}


def generate() -> dict[str, str]:
    """file name -> page text."""
    return {name: render() for name, render in PAGES.items()}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    if len(args) != 1:
        sys.stderr.write("usage: python -m gridtool.manpage [--check] DIR\n")
        return 2
    directory = Path(args[0])
    try:
        pages = generate()
    except MissingMeaning as exc:
        sys.stderr.write(f"gridtool.manpage: {exc}\n")
        return 1
    stale = []
    for name, text in pages.items():
        path = directory / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(str(path))
        if not check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if check and stale:
        sys.stderr.write(f"stale man pages: {', '.join(stale)} (run scripts/gen-man)\n")
        return 1
    for path in stale:
        sys.stderr.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
