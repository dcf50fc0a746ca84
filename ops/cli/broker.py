"""`miniflow broker setup`: a vhost and least-privilege users for a namespace (ops/broker_setup.py)."""

from __future__ import annotations

import shutil
import subprocess

import click

from miniflow.protocol.errors import ConfigError

from ..broker_setup import commands, plan, script, url_for
from ..views import print_json
from .common import console, err, settings_of


@click.group()
def broker() -> None:
    """The RabbitMQ side of a deployment."""


@broker.command("setup")
@click.option("--vhost", default=None, help="The vhost to create and grant on (default: the namespace).")
@click.option("--apply", "apply", is_flag=True, help="Run the rabbitmqctl commands (on this machine) instead of "
              "printing them as a script.")
@click.option("--node", default=None, help="With --apply: the RabbitMQ node (rabbitmqctl -n).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def setup(ctx: click.Context, vhost: str | None, apply: bool, node: str | None, as_json: bool) -> None:
    """Create a vhost and three users with the least rights for this namespace (core, executor,
    producer), with fresh passwords. Prints the script to run (or runs it with --apply) and the
    broker URL of each user. The output holds passwords: keep it out of logs."""
    settings = settings_of(ctx)
    vhost = vhost or settings.namespace
    users = plan(settings.namespace)
    base = settings.broker_url or "amqp://127.0.0.1:5672/"
    urls = {u.role: url_for(base, u, vhost) for u in users}
    if apply:
        ctl = shutil.which("rabbitmqctl")
        if ctl is None:
            raise ConfigError("rabbitmqctl is not on PATH: run without --apply and run the printed script where "
                              "RabbitMQ is")
        for step in commands(vhost, users):
            _run([ctl, *(["-n", node] if node else []), "-q", *step])
    if as_json:
        print_json(console, {"vhost": vhost, "applied": apply, "users": [
            {"role": u.role, "name": u.name, "url": urls[u.role], "configure": u.configure, "write": u.write,
             "read": u.read} for u in users]} | ({} if apply else {"script": script(vhost, users)}))
        return
    if not apply:
        console.print(script(vhost, users).rstrip("\n"), highlight=False, soft_wrap=True)
    err.print("\n".join([f"# {'created' if apply else 'after running it'}: the broker URL of each role "
                         "(MINIFLOW_BROKER_URL)"] + [f"#   {role:9} {url}" for role, url in urls.items()]),
              highlight=False, soft_wrap=True)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return
    what = argv[argv.index("-q") + 1]
    if "already exists" in (done.stderr + done.stdout) and what in ("add_vhost", "add_user"):
        if what == "add_user":
            _run([*argv[:argv.index("-q") + 1], "change_password", *argv[argv.index("-q") + 2:]])
        return
    raise ConfigError(f"rabbitmqctl {what} failed: {(done.stderr or done.stdout).strip()[:300]}")
