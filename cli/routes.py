"""``paas`` commands for routes, domains and certificates."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from cli.base import client, console, main, print_table
from contracts.routing import LEAST_CONNECTIONS, ROUND_ROBIN


def _route_query(domain: str, hostname: str | None, path: str | None) -> dict[str, str]:
    query = {"domain": domain}
    if hostname:
        query["hostname"] = hostname
    if path:
        query["path"] = path
    return query


@main.command()
def routes() -> None:
    """List the routes of your team's apps."""
    found = client().get("/routes")["routes"]
    if not found:
        click.echo("No routes: 'paas map-route APP DOMAIN --hostname NAME' maps one.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("route", "app", "balancing", "https"):
        table.add_column(column)
    for route in found:
        table.add_row(route["url"], route["app"], route["balance"],
                      "redirect" if route["https_redirect"] else "")
    print_table(table)


@main.command("map-route")
@click.argument("app")
@click.argument("domain")
@click.option("--hostname", "-n", help="The name under the domain ('*' for every name).")
@click.option("--path", help="Only requests under this path, e.g. /api (the longest wins).")
@click.option("--least-connections", "balance", flag_value=LEAST_CONNECTIONS, default=None,
              help="Send each request to the instance with the fewest open requests.")
@click.option("--round-robin", "balance", flag_value=ROUND_ROBIN,
              help="Send requests to the instances in turn (the default).")
@click.option("--redirect-https/--no-redirect-https", default=None,
              help="Redirect plain HTTP to HTTPS (the domain needs a certificate).")
def map_route(app: str, domain: str, hostname: str | None, path: str | None,
              balance: str | None, redirect_https: bool | None) -> None:
    """Send requests for HOSTNAME.DOMAIN/PATH to APP (or change a mapped route's options)."""
    body: dict[str, object] = _route_query(domain, hostname, path)
    if balance:
        body["balance"] = balance
    if redirect_https is not None:
        body["https_redirect"] = redirect_https
    route = client().post(f"/apps/{app}/routes", json=body)
    console.print(f"Route [bold]{route['url']}[/] → {app} ({route['balance']}"
                  f"{', HTTPS only' if route['https_redirect'] else ''})")


@main.command("unmap-route")
@click.argument("app")
@click.argument("domain")
@click.option("--hostname", "-n", help="The name under the domain.")
@click.option("--path", help="The route's path.")
def unmap_route(app: str, domain: str, hostname: str | None, path: str | None) -> None:
    """Stop sending requests for HOSTNAME.DOMAIN/PATH to APP (the route is deleted)."""
    done = client().delete(f"/apps/{app}/routes", params=_route_query(domain, hostname, path))
    console.print(f"Route {done['unmapped']} unmapped from {app}.")


@main.command()
def domains() -> None:
    """List the shared domains and your team's own."""
    body = client().get("/domains")
    table = Table(box=None, pad_edge=False)
    for column in ("domain", "kind", "certificate"):
        table.add_column(column)
    for d in body["domains"]:
        kind = "shared" + (" (default)" if d["name"] == body.get("default") else "") \
            if d["shared"] else f"private ({d['team']})"
        cert = d.get("certificate")
        table.add_row(d["name"], kind, f"until {cert['not_after'][:10]}" if cert else "")
    print_table(table)


@main.command("create-domain")
@click.argument("name")
@click.option("--shared", is_flag=True, help="Every team's (admins only).")
def create_domain(name: str, shared: bool) -> None:
    """Add a domain for routes: your team's own, or with --shared every team's."""
    made = client().post("/domains", json={"name": name, "shared": shared})
    console.print(f"Domain [bold]{made['name']}[/] added "
                  f"({'shared' if made['shared'] else 'private to ' + str(made['team'])}).")


@main.command("delete-domain")
@click.argument("name")
def delete_domain(name: str) -> None:
    """Delete a domain that has no routes."""
    client().delete(f"/domains/{name}")
    console.print(f"Domain {name} deleted.")


def _read_pem(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"could not read the {what} file {path}: {e}") from e


@main.command("create-certificate")
@click.argument("domain")
@click.option("--cert", "cert_file", required=True, type=click.Path(dir_okay=False,
              path_type=Path), help="PEM certificate chain (leaf first).")
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False,
              path_type=Path), help="PEM private key of the certificate (unencrypted).")
def create_certificate(domain: str, cert_file: Path, key_file: Path) -> None:
    """Serve DOMAIN and the names under it over HTTPS with this certificate (replaces one)."""
    made = client().put(f"/certificates/{domain}", json={
        "cert": _read_pem(cert_file, "certificate"), "key": _read_pem(key_file, "key")})
    console.print(f"Certificate for [bold]{made['domain']}[/] ({', '.join(made['names'])}), "
                  f"valid until {made['not_after'][:10]}: the router serves HTTPS with it.")


@main.command()
def certificates() -> None:
    """List the certificates the router serves HTTPS with."""
    found = client().get("/certificates")["certificates"]
    if not found:
        click.echo("No certificates: 'paas create-certificate DOMAIN --cert F --key F' adds one.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("domain", "names", "valid until", "sha256"):
        table.add_column(column)
    for c in found:
        table.add_row(c["domain"], ", ".join(c["names"]), c["not_after"][:10],
                      c["fingerprint"][:16])
    print_table(table)


@main.command("delete-certificate")
@click.argument("domain")
def delete_certificate(domain: str) -> None:
    """Stop serving DOMAIN over HTTPS."""
    client().delete(f"/certificates/{domain}")
    console.print(f"Certificate for {domain} deleted.")
