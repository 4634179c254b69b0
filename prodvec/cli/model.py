"""`prodvec model`: the catalog's models (recorded in the database) and blue-green model changes:
`model add`, `model activate`, `model rollback`, `model drop` (prodvec/db/model_registry.py)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from prodvec.cli.output import print_json, print_report, print_table

if TYPE_CHECKING:
    from prodvec.db.active_model import ActiveModel

_VIEWS = {"choices": ["single", "multi"], "default": "single",
          "help": "the catalog views the model stores: single (the photo) or multi (photo and coarse thumbnail) "
                  "[single]"}


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "model", help="the catalog's models: the active one and any added beside it, with their coverage; "
                      "change models without stopping search",
        description="Every process uses the model recorded in the database when the catalog was first migrated or "
                    "embedded; PRODVEC_MODEL and PRODVEC_CATALOG_VIEWS choose it for a new catalog only. To change "
                    "models: `model add SPEC`, let `prodvec worker` backfill it while searches go on, then "
                    "`model activate SPEC`; `model rollback` returns to the previous one.",
    )
    parser.add_argument("--json", action="store_true", help="the report as JSON, every model under \"models\"")
    parser.set_defaults(handler=_list)
    actions = parser.add_subparsers(title="changing models", metavar="{add,activate,rollback,drop}")

    add = actions.add_parser("add", help="add a model beside the active one; the worker backfills it")
    add.add_argument("spec", help="encoder spec, as PRODVEC_MODEL (e.g. open_clip:ViT-L-14:laion2b_s32b_b82k)")
    add.add_argument("--views", **_VIEWS)
    add.set_defaults(handler=_add)

    activate = actions.add_parser("activate", help="make an added model the active one (a short switch)")
    activate.add_argument("spec", help="a model added before (`prodvec model` lists them)")
    activate.add_argument("--views", **_VIEWS)
    activate.add_argument("--force", action="store_true",
                          help="activate although it lacks vectors for some products (searches miss them meanwhile)")
    activate.set_defaults(handler=_activate)

    rollback = actions.add_parser("rollback", help="make the previous model the active one again")
    rollback.add_argument("--force", action="store_true", help="as for activate")
    rollback.set_defaults(handler=_rollback)

    drop = actions.add_parser("drop", help="drop a model that is not active: its vectors, indexes and jobs")
    drop.add_argument("spec", help="a model that is not active")
    drop.add_argument("--views", **_VIEWS)
    drop.set_defaults(handler=_drop)


def _list(args: argparse.Namespace) -> int:
    from prodvec.config import load_settings
    from prodvec.db.active_model import choose_model, settings_model
    from prodvec.db.connection import connect, database_url
    from prodvec.db.model_registry import coverage, list_models, rollback_target
    from prodvec.errors import ModelMismatch

    settings = load_settings()
    with connect(database_url(settings)) as conn:
        products = int((conn.execute("SELECT count(*) FROM products").fetchone() or (0,))[0])
        models = list_models(conn)
        previous = rollback_target(models)
        rows = []
        for model in models:
            progress = coverage(conn, model)
            state = _state(model.active, model.deactivated_at is not None, progress.behind)
            rows.append({"spec": model.spec, "dimensions": model.dimensions, "catalog_views": model.catalog_views,
                         "state": f"{state}, rollback target" if model == previous else state,
                         "embedded": progress.embedded, "pending": progress.pending, "failed": progress.failed,
                         "behind": progress.behind})
    active: dict[str, Any] = rows[0] if rows and rows[0]["state"] == "active" else {}
    report = {
        "spec": active.get("spec"),
        "dimensions": active.get("dimensions"),
        "catalog_views": active.get("catalog_views"),
        "embedded": active.get("embedded", 0),
        "products": products,
        "coverage": round(active["embedded"] / products, 4) if active and products else None,
    }
    if args.json:
        print_json({**report, "models": rows})
    elif len(rows) > 1:
        print_table(rows, ["spec", "dimensions", "catalog_views", "state", "embedded", "pending", "failed", "behind"])
    else:
        print_report(report, as_json=False)
    if any(str(row["state"]).startswith("backfilling") for row in rows):
        print("note: `prodvec worker` backfills added models after the active one's jobs; if `behind` does not fall "
              "while workers run, their log says why (a worker that cannot load a model leaves its jobs)",
              file=sys.stderr)
    # What this shell's settings would do with it: say so, beside the report.
    if not models:
        print(f"no active model recorded yet: `prodvec migrate` (or the first `prodvec worker`) records "
              f"{settings_model(settings)} from PRODVEC_MODEL and PRODVEC_CATALOG_VIEWS", file=sys.stderr)
    else:
        try:
            choose_model(models[0].as_active, settings)
        except ModelMismatch as exc:
            print(f"note: {exc}", file=sys.stderr)
    return 0


def _state(active: bool, was_active: bool, behind: int) -> str:
    if active:
        return "active"
    if was_active:
        return "previous" if not behind else f"previous ({behind} behind)"
    return "ready" if not behind else f"backfilling ({behind} behind)"


def _add(args: argparse.Namespace) -> int:
    from prodvec.cli.database import check_weights
    from prodvec.config import load_settings
    from prodvec.db.model_registry import add_model
    from prodvec.errors import WeightsUnavailable

    url, model = _asked(args)
    try:
        check_weights(model.spec, load_settings().device)
    except WeightsUnavailable as exc:  # workers on other machines may have them: say so, go on
        print(f"note: this machine cannot load {model.spec} ({exc.reason}); workers that cannot load it leave its jobs "
              "to workers that can", file=sys.stderr)
    added, queued, new = add_model(url, model)
    named = added.as_active.argument
    if not new:
        print(f"{added} was added before: {queued} product(s) without its vector queued now; "
              f"`prodvec model` shows its progress, `prodvec model activate {named}` switches to it")
        return 0
    print(f"added {added}: {queued} product(s) queued; `prodvec worker` embeds them after the active model's jobs, "
          f"`prodvec model` shows the progress, `prodvec model activate {named}` switches to it")
    return 0


def _activate(args: argparse.Namespace) -> int:
    from prodvec.db.connection import connect
    from prodvec.db.model_registry import activate_model, find_model

    url, model = _asked(args)
    with connect(url, autocommit=True) as conn:
        _report_switch(*activate_model(conn, find_model(conn, model), force=args.force))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from prodvec.config import load_settings
    from prodvec.db.connection import connect, database_url
    from prodvec.db.model_registry import activate_model, previous_model

    with connect(database_url(load_settings()), autocommit=True) as conn:
        _report_switch(*activate_model(conn, previous_model(conn), force=args.force))
    return 0


def _drop(args: argparse.Namespace) -> int:
    from prodvec.db.connection import connect
    from prodvec.db.model_registry import drop_model, find_model

    url, model = _asked(args)
    with connect(url, autocommit=True) as conn:
        known = find_model(conn, model, to_drop=True)
        drop_model(conn, known)
    print(f"dropped {known}: its vectors, indexes and jobs")
    return 0


def _asked(args: argparse.Namespace) -> tuple[str, ActiveModel]:
    """The database URL and the model the arguments name (ConfigError for a malformed spec)."""
    from prodvec.config import load_settings
    from prodvec.db.active_model import ActiveModel
    from prodvec.db.connection import database_url
    from prodvec.encode.spec import parse_spec, spec_dimensions

    spec = parse_spec(args.spec).spec
    return database_url(load_settings()), ActiveModel(spec, spec_dimensions(spec), args.views)


#: How a switch's step that reads like a problem and is none starts (its text comes from
#: migrations/0009's SQL, which stays as released), and what it means for the user.
_NARROW_FILTER_INDEX = "built products_category_price on (category, price) alone"
_NARROW_FILTER_INDEX_MEANS = (
    " (expected for a model this wide, nothing to do: exact filtered passes read its vectors from the table "
    "instead of that index, with the same answers)"
)


def _report_switch(steps: list[str], seconds: float) -> None:
    for step in steps:
        print(step + _NARROW_FILTER_INDEX_MEANS if step.startswith(_NARROW_FILTER_INDEX) else step)
    if seconds:
        print(f"switched in {seconds * 1000:.0f} ms; image searches embed with the new model from now on")
