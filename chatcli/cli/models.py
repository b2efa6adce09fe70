"""``chat pull | list | show | rm | cp | create``: the model store on the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from chatcli.cli.guard import Fail, guarded

DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")
# --api and --api-key as `chat run` takes them too (app.py uses these).
API = typer.Option(
    "auto", "--api", help="The --host server's protocol: openai, ollama or auto (detect)."
)
API_KEY = typer.Option(
    None, "--api-key", help="Key for an OpenAI-compatible --host (else $CHATCLI_API_KEY, "
    "$OPENAI_API_KEY).",
)


def pull(
    name: str = typer.Argument(..., help="llama3.2, user/model:tag, hf.co/USER/REPO[:QUANT]"),
    insecure: bool = typer.Option(False, "--insecure", help="Allow plain-http registries."),
    debug: bool = DEBUG,
) -> None:
    """Download a model from the Ollama registry or Hugging Face (resumes where it stopped)."""

    def action() -> None:
        from chatcli.cli.progress import progress_printer
        from chatcli.models.pull import pull as do_pull

        with progress_printer(sys.stderr.isatty()) as show:
            try:
                do_pull(name, insecure=insecure, on_progress=show)
            except KeyboardInterrupt:
                typer.echo("Interrupted; run the same command again to resume.", err=True)
                raise

    raise typer.Exit(guarded(debug, action))


def list_models(
    host: str | None = typer.Option(
        None, "--host", envvar="CHATCLI_HOST",
        help="List a server's models instead: chat serve, Ollama or OpenAI-compatible (URL or "
        "host:port; a URL ending in /v1 means OpenAI).",
    ),
    api: str = API,
    api_key: str | None = API_KEY,
    debug: bool = DEBUG,
) -> None:
    """List the models chatcli can run (its store, the bundled model, Ollama's store)."""

    def action() -> None:
        from chatcli.models.catalog import list_text

        typer.echo(server_list_text(host, api, api_key) if host else list_text())

    raise typer.Exit(guarded(debug, action))


def server_list_text(host: str, api: str, api_key: str | None) -> str:
    """``chat list --host``: the server's models in the local table's columns, "?" where the
    server's protocol does not say (an OpenAI server gives no ID, size or date)."""
    from chatcli.client.openai_remote import connect
    from chatcli.models.catalog import human_ago, human_size, table

    client = connect(host, api=api, key=api_key)
    try:
        models = client.list_models()
    finally:
        client.close()
    rows = [["NAME", "ID", "SIZE", "MODIFIED", "STORE"]]
    for m in models:
        rows.append([m.name, m.id or "?", "?" if m.size is None else human_size(m.size),
                     "?" if m.modified is None else human_ago(m.modified), "remote"])
    return table(rows)


def typed_name(name: str) -> str:
    """The model a name a person typed stands for: an alias from config.toml's [aliases] is
    followed, as ``chat run`` follows it."""
    from chatcli.core import config
    from chatcli.models.resolve import expand_alias

    return expand_alias(name, config.aliases())


def show(
    name_arg: str = typer.Argument(..., metavar="NAME", help="Model name (or alias) or .gguf "
                                   "path."),
    modelfile: bool = typer.Option(False, "--modelfile", help="Show a Modelfile for it."),
    parameters: bool = typer.Option(False, "--parameters", help="Show its parameters."),
    template: bool = typer.Option(False, "--template", help="Show its chat template."),
    system: bool = typer.Option(False, "--system", help="Show its system prompt."),
    license: bool = typer.Option(False, "--license", help="Show its license."),
    debug: bool = DEBUG,
) -> None:
    """Show a model's architecture, parameters, context, quantization and capabilities."""

    def action() -> None:
        from chatcli.client.local import LocalClient
        from chatcli.models.modelfile import render_modelfile
        from chatcli.models.modelinfo import parameter_lines, show_text
        from chatcli.models.resolve import resolve

        name = typed_name(name_arg)
        if modelfile:
            typer.echo(render_modelfile(resolve(name)), nl=False)
        elif parameters:
            for line in parameter_lines(resolve(name).options):
                typer.echo(line)
        elif template:
            resolved = resolve(name)
            typer.echo(resolved.template or LocalClient().show(name)["template"])
        elif system:
            typer.echo(resolve(name).system or "")
        elif license:
            typer.echo(LocalClient().show(name)["license"])
        else:
            typer.echo(show_text(LocalClient().show(name)))

    raise typer.Exit(guarded(debug, action))


def rm(
    names: list[str] = typer.Argument(..., help="Models to remove."),
    debug: bool = DEBUG,
) -> None:
    """Remove models from chatcli's store (a blob is freed when no model uses it)."""

    def action() -> int:
        from chatcli.core import config
        from chatcli.core.errors import ChatCliError, ModelNotFoundError
        from chatcli.models.manage import remove_model

        aliases = config.aliases()
        failed = 0
        for name in names:
            try:
                remove_model(name)
                typer.echo(f"deleted '{name}'")
            except ModelNotFoundError as e:
                # An alias is not followed here: removing a model is not a thing to do to
                # whatever a short name happens to point at.
                hint = (f"; '{name}' is an alias for '{aliases[name]}' in config.toml (remove "
                        f"that model by its name, or the alias with chat config edit)"
                        if name.strip() in aliases else "")
                typer.echo(f"Error: {e}{hint}", err=True)
                failed += 1
            except ChatCliError as e:
                typer.echo(f"Error: {e}", err=True)
                failed += 1
        return 1 if failed else 0

    raise typer.Exit(guarded(debug, action))


def cp(
    source: str = typer.Argument(..., help="Existing model (or alias)."),
    destination: str = typer.Argument(..., help="New name."),
    debug: bool = DEBUG,
) -> None:
    """Copy a model to a new name (no data is duplicated in chatcli's store)."""

    def action() -> None:
        from chatcli.models.manage import copy_model

        copy_model(typed_name(source), destination)
        typer.echo(f"copied '{source}' to '{destination}'")

    raise typer.Exit(guarded(debug, action))


def create(
    name: str = typer.Argument(..., help="Name of the new model."),
    file: Path = typer.Option(Path("Modelfile"), "--file", "-f", help="The Modelfile."),
    debug: bool = DEBUG,
) -> None:
    """Create a model from a Modelfile (FROM a name or a .gguf path, PARAMETER, SYSTEM, ...)."""

    def action() -> None:
        from chatcli.models.modelfile import create as do_create
        from chatcli.models.modelfile import read_modelfile

        if not file.is_file():
            raise Fail(f"no Modelfile at {file} (use -f PATH)")
        modelfile = read_modelfile(file)
        typer.echo("gathering model components", err=True)
        created = do_create(name, modelfile)
        typer.echo("writing manifest", err=True)
        typer.echo(f"success: created '{created.display}'")

    raise typer.Exit(guarded(debug, action))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``chat`` app."""
    app.command()(pull)
    app.command("list")(list_models)
    app.command()(show)
    app.command()(rm)
    app.command()(cp)
    app.command()(create)
