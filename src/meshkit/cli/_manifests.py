"""``meshkit manifests``: the project as Kubernetes objects, in YAML.

The objects come from ``meshkit.deploy._manifests`` (what each one is,
and why); this command writes them and says what the user must do before
``kubectl apply``: create the Secrets they read, which it never writes.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer

from meshkit.cli._app import app, fail
from meshkit.cli._project import ProjectOption, open_project
from meshkit.control import TOKEN_ENV
from meshkit.deploy import Project
from meshkit.deploy._manifests import (
    DEFAULT_IMAGE,
    DEFAULT_PROMETHEUS,
    DEFAULT_WORKDIR,
    KubernetesOptions,
    NeededSecret,
    kubernetes_manifests,
    needed_secrets,
)
from meshkit.deploy._yaml import dump_all
from meshkit.errors import MeshkitError

# What a directory of manifests holds: one file per kind. Files of these
# names that a run does not write are left from an earlier one (a Rollout
# before the service went back to rolling updates) and are removed, lest
# `kubectl apply -f` create them again.
KINDS = ("AnalysisTemplate", "ConfigMap", "Deployment", "Rollout", "Service", "StatefulSet")
_ONE_FILE = (".yaml", ".yml")


@app.command()
def manifests(
    *,
    project: ProjectOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="OUT",
            help=(
                "A directory: one file per kind (deployment.yaml, service.yaml...);"
                " or a file ending in .yaml: every object in it. Default: standard output."
            ),
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        str,
        typer.Option(
            metavar="IMAGE",
            help=(
                "The image every pod runs, which you build: your project directory at"
                " --workdir, and meshkit installed (`meshkit` and `python` on the PATH)."
            ),
        ),
    ] = DEFAULT_IMAGE,
    workdir: Annotated[
        str, typer.Option(metavar="DIR", help="Where the image holds the project directory.")
    ] = DEFAULT_WORKDIR,
    prometheus: Annotated[
        str,
        typer.Option(
            metavar="URL", help="The Prometheus that canary analyses query (Argo Rollouts)."
        ),
    ] = DEFAULT_PROMETHEUS,
) -> None:
    """Write Kubernetes manifests for the project: the control plane (a StatefulSet with a
    volume), each service (a Deployment, or an Argo Rollout for canary and blue-green
    deploys, and a Service) and the gateway (a Deployment, a Service, the project's file
    in a ConfigMap).

    The pods read the control plane's token from a Secret, which you create:
    the command is printed. No secret is ever written in the manifests.
    """
    found = open_project(project)
    options = KubernetesOptions(image=image, workdir=workdir, prometheus=prometheus)
    try:
        objects = kubernetes_manifests(found, config_text=found.path.read_text(), options=options)
    except MeshkitError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot read {found.path}: {error}")
    try:
        where = _write(objects, output)
    except OSError as error:
        fail(f"cannot write {output}: {error}")
    # On standard error when the YAML is on standard output, so it can be piped.
    say = _Say(err=output is None)
    say(where)
    _print_next_steps(say, found, objects, output, options)


class _Say:
    def __init__(self, *, err: bool) -> None:
        self.err = err

    def __call__(self, text: str = "") -> None:
        typer.echo(text, err=self.err)


def _write(objects: list[dict[str, Any]], output: Path | None) -> str:
    """Write ``objects`` where ``output`` says; what was written, in words."""
    if output is None:
        sys.stdout.write(dump_all(objects))
        return f"{len(objects)} objects"
    if output.suffix in _ONE_FILE and not output.is_dir():
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(dump_all(objects))
        return f"wrote {len(objects)} objects to {output}"
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for manifest in objects:
        by_kind[manifest["kind"]].append(manifest)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, group in by_kind.items():
        path = output / f"{kind.lower()}.yaml"
        path.write_text(dump_all(group))
        written.append(path.name)
    removed = []
    for kind in KINDS:
        stale = output / f"{kind.lower()}.yaml"
        if kind not in by_kind and stale.is_file():
            stale.unlink()
            removed.append(stale.name)
    said = f"wrote {len(objects)} objects to {output}: {', '.join(sorted(written))}"
    if removed:
        said += f" (removed {', '.join(removed)}, from an earlier run: no such objects now)"
    return said


def _print_next_steps(
    say: _Say,
    project: Project,
    objects: list[dict[str, Any]],
    output: Path | None,
    options: KubernetesOptions,
) -> None:
    say()
    say("Before applying them, create the Secrets they read, in the same namespace:")
    by_secret: dict[str, list[NeededSecret]] = defaultdict(list)
    for needed in needed_secrets(project):
        by_secret[needed.secret].append(needed)
    for secret, keys in by_secret.items():
        say(f"  kubectl create secret generic {secret} {_literals(keys)}")
        if keys[0].variable == TOKEN_ENV:
            say("    (the project's token, 64 random hex digits: every pod of the project uses it)")
        elif not any(key.required for key in keys):
            say("    (optional: the gateway's keys from your shell, as `meshkit up` reads them;")
            say("     without the Secret, those API keys are disabled)")
        else:
            say("    (the gateway's keys from your shell, as `meshkit up` reads them)")
    say(f"Then: kubectl apply -f {output if output is not None else 'FILE'}")
    say(
        f"Every pod runs the image {options.image}: build it with the project at"
        f" {options.workdir} and meshkit installed."
    )
    kinds = {manifest["kind"] for manifest in objects}
    if "Rollout" in kinds:
        say(
            "Rollouts need Argo Rollouts 1.8 or later in the cluster; canary analyses"
            f" query Prometheus at {options.prometheus} (--prometheus)."
        )


def _literals(keys: list[NeededSecret]) -> str:
    """kubectl's ``--from-literal`` of each key: a new token, or the variable's value."""
    return " ".join(
        f'--from-literal={key.key}="$(openssl rand -hex 32)"'
        if key.variable == TOKEN_ENV
        else f'--from-literal={key.key}="${key.variable}"'
        for key in keys
    )
